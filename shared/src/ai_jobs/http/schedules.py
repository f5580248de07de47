"""The /api/schedules routes: a user's recurring jobs (issue 16 item 6).

Bodies, handlers and what each endpoint does, in one module so the job routes'
files stay as they are. A schedule is checked like a job at create (type, input,
spend limits) plus its cron expression and time zone; it fires through the sweep
and the wake-up (ai_jobs.schedules)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from werkzeug.wrappers import Response

from ai_jobs.errors import ActiveJobLimitError, JobNotFoundError
from ai_jobs.http.io import ApiRequest, json_response, read_json, read_query, uuid_arg
from ai_jobs.http.problems import Problem
from ai_jobs.http.schemas import PageQuery
from ai_jobs.schedules import InvalidScheduleError, Schedule, check_schedule, next_tick


class CreateScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=100, description="a registered job type, see GET /api/job-types")
    input: dict[str, Any] = Field(default_factory=dict, description="validated against the type's input schema")
    cron: str = Field(
        min_length=1, max_length=200,
        description="5 fields (minute hour day-of-month month day-of-week), or @hourly, @daily, @weekly, @monthly, "
                    "@yearly; six fields put seconds first (30 0 6 * * *: 06:00:30). Two ticks closer than AI_JOBS_SCHEDULE_MIN_INTERVAL_SECONDS "
                    "(default 60) are refused",
    )
    timezone: str = Field(default="UTC", min_length=1, max_length=64,
                          description="IANA time zone the cron fields are read in, e.g. Europe/Berlin (DST-aware)")
    name: str | None = Field(default=None, min_length=1, max_length=200, description="yours; default the type")
    paused: bool = Field(default=False, description="create it paused (POST .../resume starts it)")


class PublicSchedule(BaseModel):
    """A schedule as its owner sees it (RLS reads return the same columns plus run_as, always null)."""

    id: UUID
    user_id: UUID | None = None
    name: str
    job_type: str
    input: dict[str, Any]
    cron: str
    timezone: str
    next_run_at: datetime = Field(description="the next tick (UTC); it fires once, then moves to the tick after now")
    paused: bool
    last_tick_at: datetime | None = Field(default=None, description="the last tick fired")
    last_fired_at: datetime | None = None
    last_job_id: UUID | None = Field(default=None, description="the job the last tick created")
    last_error: dict[str, Any] | None = Field(
        default=None, description="why the last tick created no job (e.g. AJ001: your active-job cap); null after a job")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, schedule: Schedule) -> PublicSchedule:
        return cls.model_validate(schedule.model_dump(exclude={"run_as"}))


class ScheduleList(BaseModel):
    schedules: list[PublicSchedule]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next page")


def _schedule_id(request: ApiRequest) -> UUID:
    return uuid_arg(request, "schedule_id", "schedule id")


def _not_found() -> Problem:
    return Problem(404, "schedule_not_found", "schedule not found")


def create_schedule(request: ApiRequest) -> Response:
    """POST /api/schedules"""
    from ai_jobs.service import build_job

    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    body = read_json(request, CreateScheduleRequest, max_bytes=svc.settings.max_body_bytes,
                     max_depth=svc.settings.max_input_depth)
    limits = svc.settings.schedules
    try:
        first = check_schedule(body.cron, body.timezone, min_interval_seconds=limits.min_interval_seconds)
    except InvalidScheduleError as exc:
        raise Problem(422, exc.code, exc.message,
                      errors=[{"field": exc.field, "message": exc.message, "type": exc.code}]) from None
    # the same checks as creating the job now (type, input, spend limits); nothing is enqueued
    new_job = build_job(who.user_id, body.type, body.input, settings=svc.settings, registry=svc.registry)
    if limits.max_per_user == 0:
        raise Problem(409, "schedule_limit", "schedules are turned off (AI_JOBS_MAX_SCHEDULES_PER_USER=0)")
    try:
        schedule = svc.store.create_schedule(
            who.user_id, name=body.name or body.type, job_type=body.type, input=new_job.input, cron=body.cron,
            timezone=body.timezone, next_run_at=first, paused=body.paused, max_schedules=limits.max_per_user,
        )
    except ActiveJobLimitError as exc:
        raise Problem(409, "schedule_limit", f"{exc.message}; delete a schedule first") from None
    return json_response(PublicSchedule.of(schedule), 201)


def list_schedules(request: ApiRequest) -> Response:
    """GET /api/schedules?limit=&cursor="""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    query = read_query(request, PageQuery)
    schedules, cursor = svc.store.list_schedules(user_id=who.user_id, limit=query.limit, cursor=query.cursor)
    return json_response(ScheduleList(schedules=[PublicSchedule.of(s) for s in schedules], next_cursor=cursor))


def _set_paused(request: ApiRequest, paused: bool) -> Response:
    """Pause, or resume from the next tick after now (ticks missed while paused never fire).
    Both are idempotent: resuming an active schedule leaves its next tick as it is."""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    schedule_id = _schedule_id(request)
    try:
        upcoming = None
        if not paused:
            row = svc.store.get_schedule(schedule_id, user_id=who.user_id)
            try:
                upcoming = next_tick(row.cron, row.timezone, datetime.now(UTC))
            except InvalidScheduleError:  # e.g. its time zone left tzdata: due now, the sweep reschedules it
                upcoming = datetime.now(UTC)
        schedule = svc.store.set_schedule_paused(schedule_id, user_id=who.user_id, paused=paused,
                                                 next_run_at=upcoming)
    except JobNotFoundError:
        raise _not_found() from None
    return json_response(PublicSchedule.of(schedule))


def pause_schedule(request: ApiRequest) -> Response:
    """POST /api/schedules/{schedule_id}/pause"""
    return _set_paused(request, True)


def resume_schedule(request: ApiRequest) -> Response:
    """POST /api/schedules/{schedule_id}/resume"""
    return _set_paused(request, False)


def delete_schedule(request: ApiRequest) -> Response:
    """DELETE /api/schedules/{schedule_id}"""
    svc = request.services
    who = svc.authenticate(request.headers.get("Authorization"))
    schedule_id = _schedule_id(request)
    try:
        svc.store.delete_schedule(schedule_id, user_id=who.user_id)
    except JobNotFoundError:
        raise _not_found() from None
    return json_response(None, 204)
