"""Schedules: recurring jobs from a cron expression and a time zone.

Python computes the ticks (cronsim, in the schedule's IANA time zone, so daylight
saving time is handled as cron does: a skipped local time fires right after the
jump, a repeated one fires once for a fixed-time schedule). SQL fires them with a
compare-and-set on `next_run_at` plus the enqueue in one transaction, keyed by
schedule id and tick, so any number of workers and sweeps fire a tick at most once.
The next tick is computed after the database's now, not after the missed tick: a
schedule that was not served for a while fires once, not a burst.

This module imports only pydantic; cronsim is imported when a tick is computed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from ai_jobs.errors import AiJobsError

if TYPE_CHECKING:
    from ai_jobs.registry import JobRegistry
    from ai_jobs.settings import Settings
    from ai_jobs.store.base import JobStore

log = logging.getLogger(__name__)

# Common @-aliases, as crontab(5) defines them.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# How many ticks (and how far ahead) the minimum-interval check looks at.
CHECK_TICKS = 1000
CHECK_HORIZON = timedelta(days=4 * 366)
MAX_CRON_LENGTH = 200
MAX_TIMEZONE_LENGTH = 64


class InvalidScheduleError(AiJobsError):
    """The cron expression or time zone is invalid, never fires, or fires more often
    than AI_JOBS_SCHEDULE_MIN_INTERVAL_SECONDS allows."""

    code = "invalid_schedule"

    def __init__(self, message: str, *, field: str = "cron") -> None:
        super().__init__(message)
        self.field = field


class ScheduleSettings(BaseModel):
    """AI_JOBS_SCHEDULE_MIN_INTERVAL_SECONDS, AI_JOBS_MAX_SCHEDULES_PER_USER, AI_JOBS_SCHEDULE_USER_ID."""

    model_config = ConfigDict(frozen=True)

    min_interval_seconds: float = Field(default=60, ge=1, le=86400)
    max_per_user: int = Field(default=20, ge=0, le=10000)
    # Deployment schedules' jobs run as this user unless the declaration names one.
    run_as: UUID | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ScheduleSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, name in (("min_interval_seconds", "AI_JOBS_SCHEDULE_MIN_INTERVAL_SECONDS"),
                            ("max_per_user", "AI_JOBS_MAX_SCHEDULES_PER_USER"),
                            ("run_as", "AI_JOBS_SCHEDULE_USER_ID")):
            if env.get(name, "").strip():
                values[field] = env[name].strip()
        return cls.model_validate(values)


class Schedule(BaseModel):
    """A stored schedule row."""

    id: UUID
    user_id: UUID | None = None
    run_as: UUID | None = None
    name: str
    job_type: str
    input: dict[str, Any]
    cron: str
    timezone: str
    next_run_at: datetime
    paused: bool
    last_tick_at: datetime | None = None
    last_fired_at: datetime | None = None
    last_job_id: UUID | None = None
    last_error: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


class FireResult(BaseModel):
    """What ai_jobs_fire_schedule_v1 did: fired False when another caller fired the tick."""

    fired: bool
    job_id: UUID | None = None
    created: bool = False
    error: dict[str, Any] | None = None


class FireReport(BaseModel):
    fired: int = 0
    skipped: int = 0  # ticks another caller fired first
    failed: int = 0  # ticks fired without a job (refused enqueue; see the schedule's last_error)


def _zone(timezone: str) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(timezone, str) or not 1 <= len(timezone) <= MAX_TIMEZONE_LENGTH or ".." in timezone \
            or timezone.startswith("/"):
        raise InvalidScheduleError(f"unknown time zone {timezone!r}", field="timezone")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidScheduleError(f"unknown time zone {timezone!r} (use an IANA name such as Europe/Berlin)",
                                   field="timezone") from None


def _expression(cron: str) -> str:
    if not isinstance(cron, str):
        raise InvalidScheduleError("cron must be a string")
    text = " ".join(cron.split())
    if not 1 <= len(text) <= MAX_CRON_LENGTH:
        raise InvalidScheduleError(f"cron must be 1 to {MAX_CRON_LENGTH} characters")
    return ALIASES.get(text.lower(), text)


def ticks_after(cron: str, timezone: str, after: datetime) -> Any:
    """Ticks strictly after `after`, as aware UTC datetimes (an iterator)."""
    from cronsim import CronSim, CronSimError

    zone = _zone(timezone)
    expression = _expression(cron)
    try:
        simulator = CronSim(expression, after.astimezone(zone))
    except CronSimError as exc:
        raise InvalidScheduleError(f"invalid cron expression {cron!r}: {exc}") from None

    def generate() -> Any:
        try:
            for tick in simulator:
                yield tick.astimezone(UTC)
        except (CronSimError, StopIteration, ValueError, OverflowError):
            return

    return generate()


def next_tick(cron: str, timezone: str, after: datetime) -> datetime:
    """The first tick strictly after `after` (UTC)."""
    for tick in ticks_after(cron, timezone, after):
        if tick > after:
            return tick
    raise InvalidScheduleError(f"cron expression {cron!r} never fires")


def check_schedule(cron: str, timezone: str, *, min_interval_seconds: float, now: datetime | None = None) -> datetime:
    """Validate a schedule and return its first tick. Refused (InvalidScheduleError):
    a bad expression or time zone, one that never fires within 4 years, or two ticks
    closer than `min_interval_seconds` among the next 1,000 (within 4 years)."""
    now = now or datetime.now(UTC)
    first: datetime | None = None
    previous: datetime | None = None
    for count, tick in enumerate(ticks_after(cron, timezone, now)):
        if tick > now + CHECK_HORIZON or count >= CHECK_TICKS:
            break
        if previous is not None and (tick - previous).total_seconds() < min_interval_seconds:
            raise InvalidScheduleError(
                f"cron expression {cron!r} fires every {(tick - previous).total_seconds():g} s at times; "
                f"the minimum is {min_interval_seconds:g} s (AI_JOBS_SCHEDULE_MIN_INTERVAL_SECONDS)")
        first = first or tick
        previous = tick
    if first is None:
        raise InvalidScheduleError(f"cron expression {cron!r} never fires within 4 years")
    return first


def upsert_deployment_schedules(store: JobStore, registry: JobRegistry, settings: Settings) -> int:
    """Write the schedules declared with `registry.schedule(...)` (idempotent: an
    unchanged declaration writes nothing; a changed cron or time zone restarts from
    its next tick). Returns how many rows were inserted or changed."""
    changed = 0
    for declared in registry.schedules():
        run_as = declared.run_as or settings.schedules.run_as
        if run_as is None:
            log.error("deployment schedule %r has no user to run as: pass run_as= or set AI_JOBS_SCHEDULE_USER_ID",
                      declared.name)
            continue
        registry.get(declared.job_type).parse_input(declared.input)
        first = check_schedule(declared.cron, declared.timezone,
                               min_interval_seconds=settings.schedules.min_interval_seconds)
        changed += len(store.upsert_schedule(
            name=declared.name, run_as=run_as, job_type=declared.job_type, input=dict(declared.input),
            cron=declared.cron, timezone=declared.timezone, next_run_at=first,
        ))
    return changed


def fire_due_schedules(store: JobStore, registry: JobRegistry, settings: Settings, *, limit: int = 100) -> FireReport:
    """Fire every due tick once. Each schedule's next tick is the first after the
    database's now, so missed ticks collapse into this one. A job the queue refuses
    (active-job cap, budget) or that can no longer be built (type removed, input no
    longer valid) skips the tick and is kept in the schedule's last_error."""
    from ai_jobs.errors import StoreUnavailableError
    from ai_jobs.service import build_job

    report = FireReport()
    for schedule, db_now in store.due_schedules(limit=limit):
        try:
            new_next = next_tick(schedule.cron, schedule.timezone, max(db_now, schedule.next_run_at))
        except InvalidScheduleError as exc:  # e.g. a time zone removed from tzdata: try again in a day
            log.error("schedule %s: %s", schedule.id, exc.message)
            new_next = max(db_now, schedule.next_run_at) + timedelta(days=1)
        job: dict[str, Any] | None
        skip: dict[str, Any] | None = None
        try:
            new_job = build_job(schedule.user_id or schedule.run_as, schedule.job_type, schedule.input,  # type: ignore[arg-type]
                                settings=settings, registry=registry)
            job = new_job.model_dump(mode="json", exclude_none=True,
                                     exclude={"user_id", "job_type", "input", "idempotency_key"})
        except AiJobsError as exc:
            job, skip = None, {"code": exc.code, "message": exc.message[:1000]}
        except Exception as exc:  # noqa: BLE001 - one schedule's input must not stop every other's
            # e.g. a RecursionError from a deeply nested user schema: skip this tick (its
            # next_run_at still moves on, so it cannot sort first for ever) and go on.
            log.exception("schedule %s: its job could not be built", schedule.id)
            job, skip = None, {"code": "schedule_job_unbuildable",
                               "message": f"the scheduled job could not be built ({type(exc).__name__}); "
                                          "change the schedule's input or delete it"}
        try:
            result = store.fire_schedule(schedule.id, expected_next=schedule.next_run_at, new_next=new_next,
                                         job=job, skip_error=skip)
        except StoreUnavailableError:
            raise
        except AiJobsError as exc:  # this schedule's row or job refused by the database: the next one
            log.error("schedule %s: tick %s not fired: %s", schedule.id, schedule.next_run_at.isoformat(), exc.message)
            report.failed += 1
            continue
        if not result.fired:
            report.skipped += 1
        elif result.error is not None:
            report.failed += 1
            log.warning("schedule %s: tick %s skipped: %s", schedule.id, schedule.next_run_at.isoformat(),
                        result.error.get("message"))
        else:
            report.fired += 1
    return report


# (store, declarations) already written by this process: declared once per process.
_declared: set[tuple[int, tuple[Any, ...]]] = set()


def run_schedules(store: JobStore, registry: JobRegistry, settings: Settings) -> FireReport:
    """The sweep's and the worker loop's step: declare deployment schedules (once per
    process and store), then fire due ticks. A schedule's own problem is logged, never
    raised; the store being down does raise."""
    from ai_jobs.errors import StoreUnavailableError

    key = (id(store), tuple(registry.schedules()), settings.schedules)
    if key not in _declared:
        try:
            upsert_deployment_schedules(store, registry, settings)
            _declared.add(key)
        except StoreUnavailableError:
            raise
        except (AiJobsError, ValueError) as exc:
            log.error("deployment schedules not written: %s", exc)
    return fire_due_schedules(store, registry, settings)
