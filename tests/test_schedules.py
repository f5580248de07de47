"""Schedules (issue 16 item 6): cron ticks in a time zone, fired at most once per
tick by any number of workers and sweeps, a missed tick fired once, pause/resume/
delete, RLS, and the HTTP API's statuses. Real PostgreSQL throughout."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel, field_validator

from ai_jobs.registry import JobRegistry, load_job_modules
from ai_jobs.runner import Runner
from ai_jobs.schedules import (
    InvalidScheduleError,
    ScheduleSettings,
    check_schedule,
    fire_due_schedules,
    next_tick,
    run_schedules,
)
from ai_jobs.settings import Settings
from ai_jobs.store.postgres import PostgresStore
from ai_jobs.sweep import sweep
from tests.rls import act_as

BERLIN = "Europe/Berlin"
COUNTDOWN = {"steps": 1, "step_seconds": 0}


def settings_with(min_interval: float = 60, max_per_user: int = 20, run_as: uuid.UUID | None = None) -> Settings:
    return Settings(store="postgres", schedules=ScheduleSettings(
        min_interval_seconds=min_interval, max_per_user=max_per_user, run_as=run_as))


@pytest.fixture(scope="module")
def registry() -> JobRegistry:
    return load_job_modules(demo=True)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- ticks -------------------------------------------------------------------------------


def test_daily_schedule_across_spring_forward_fires_once_after_the_jump() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist that day
    ticks = []
    after = utc(2026, 3, 27, 12)
    for _ in range(3):
        after = next_tick("30 2 * * *", BERLIN, after)
        ticks.append(after)
    assert ticks == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]


def test_daily_schedule_across_fall_back_fires_once_and_hourly_fires_in_both_hours() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice; a daily job runs once
    daily, after = [], utc(2026, 10, 24, 12)
    for _ in range(3):
        after = next_tick("30 2 * * *", BERLIN, after)
        daily.append(after)
    assert daily == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)]
    half_hourly, after = [], utc(2026, 10, 24, 23, 10)  # 01:10 CEST
    for _ in range(5):
        after = next_tick("*/30 * * * *", BERLIN, after)
        half_hourly.append(after)
    gaps = {(b - a).total_seconds() for a, b in zip(half_hourly, half_hourly[1:])}
    assert gaps == {1800.0}, half_hourly  # every 30 real minutes, through both 02:xx hours


def test_time_zone_and_aliases() -> None:
    assert next_tick("0 9 * * 1-5", "America/New_York", utc(2026, 7, 3, 14)) == utc(2026, 7, 6, 13)  # Fri -> Mon, EDT
    assert next_tick("@daily", "Asia/Tokyo", utc(2026, 1, 1, 16)) == utc(2026, 1, 2, 15)


def test_six_fields_put_seconds_first() -> None:
    """As the README says: seconds, then the five usual fields (cronsim's order)."""
    assert next_tick("30 0 6 * * *", "UTC", utc(2026, 7, 3, 7)) == utc(2026, 7, 4, 6, 0, 30)
    check_schedule("30 0 6 * * *", "UTC", min_interval_seconds=60)
    with pytest.raises(InvalidScheduleError):  # seconds last is not a schedule: 30 is no day of the week
        check_schedule("0 6 * * * 30", "UTC", min_interval_seconds=60)


@pytest.mark.parametrize(
    ("cron", "timezone", "field"),
    [
        ("61 * * * *", "UTC", "cron"),
        ("* * *", "UTC", "cron"),
        ("", "UTC", "cron"),
        ("0 0 30 2 *", "UTC", "cron"),  # never fires
        ("* * * * *", "Mars/Olympus", "timezone"),
        ("* * * * *", "../../etc/passwd", "timezone"),
        ("*/10 * * * * *", "UTC", "cron"),  # every 10 seconds: under the 60 s minimum
        ("0,30 * * * * *", "UTC", "cron"),
    ],
)
def test_invalid_or_too_frequent_is_refused(cron: str, timezone: str, field: str) -> None:
    with pytest.raises(InvalidScheduleError) as info:
        check_schedule(cron, timezone, min_interval_seconds=60)
    assert info.value.field == field


def test_minimum_interval_is_a_setting() -> None:
    check_schedule("* * * * *", "UTC", min_interval_seconds=60)
    with pytest.raises(InvalidScheduleError, match="minimum is 120"):
        check_schedule("* * * * *", "UTC", min_interval_seconds=120)
    check_schedule("* * * * * *", "UTC", min_interval_seconds=1)


# -- firing --------------------------------------------------------------------------------


def make_schedule(store: PostgresStore, user: uuid.UUID, cron: str, *, next_run_at: datetime | None = None,
                  job_type: str = "example.countdown", timezone: str = "UTC") -> Any:
    first = next_run_at or check_schedule(cron, timezone, min_interval_seconds=1)
    return store.create_schedule(user, name="test", job_type=job_type, input=COUNTDOWN, cron=cron, timezone=timezone,
                                 next_run_at=first)


def scheduled_jobs(db: psycopg.Connection, schedule_id: uuid.UUID) -> list[tuple[str, str]]:
    return db.execute(
        "select id::text, metadata ->> 'scheduled_for' from public.ai_jobs where metadata ->> 'schedule_id' = %s "
        "order by created_at", (str(schedule_id),)).fetchall()


def test_four_workers_and_two_sweeps_fire_each_tick_exactly_once(
    db: psycopg.Connection, database_url: str, make_user, registry: JobRegistry
) -> None:
    user = make_user()
    settings = settings_with(min_interval=1)
    stores = [PostgresStore(database_url, min_size=1, max_size=2) for _ in range(6)]
    try:
        schedule = make_schedule(stores[0], user, "* * * * * *")  # every second
        first_tick = schedule.next_run_at
        stop = threading.Event()
        fired: Counter[str] = Counter()
        errors: list[BaseException] = []

        def worker(store: PostgresStore, name: str) -> None:
            try:
                while not stop.is_set():
                    fired[name] += run_schedules(store, registry, settings).fired
                    time.sleep(0.01)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        def sweeper(store: PostgresStore, name: str) -> None:
            try:
                while not stop.is_set():
                    report = sweep(store, Runner(store, registry), None, stale_pending_seconds=60,
                                   budget_seconds=0.2, settings=settings)
                    fired[name] += report.schedules_fired
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(stores[i], f"worker{i}")) for i in range(4)]
        threads += [threading.Thread(target=sweeper, args=(stores[4 + i], f"sweep{i}")) for i in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        # at least 5 ticks, and won by at least two callers: with one tick a second, one
        # caller can win the first few in a row (seen about once in ten runs)
        while time.monotonic() < deadline and (
            len(scheduled_jobs(db, schedule.id)) < 5 or sum(1 for name in list(fired) if fired[name]) < 2
        ):
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        jobs = scheduled_jobs(db, schedule.id)
        ticks = [tick for _, tick in jobs]
        assert len(ticks) >= 5, "fewer than 5 ticks fired in 30 s"
        assert len(set(ticks)) == len(ticks), Counter(ticks).most_common(3)  # one job per tick
        assert sum(fired.values()) == len(jobs)  # each tick won by exactly one caller
        assert min(datetime.fromisoformat(t) for t in ticks) == first_tick
        assert sum(1 for name in fired if fired[name]) >= 2, fired  # the race was real
    finally:
        for store in stores:
            store.close()


def test_missed_ticks_fire_once_not_a_burst(db: psycopg.Connection, pg_store: PostgresStore, make_user,
                                            registry: JobRegistry) -> None:
    user = make_user()
    schedule = make_schedule(pg_store, user, "* * * * *")
    # nobody fired for three ticks (sweep down): next_run_at is 3 minutes in the past
    missed = db.execute("select date_trunc('minute', now()) - interval '3 minutes'").fetchone()[0]
    db.execute("update public.ai_job_schedules set next_run_at = %s where id = %s", (missed, schedule.id))
    report = fire_due_schedules(pg_store, registry, settings_with())
    assert (report.fired, report.failed) == (1, 0)
    assert fire_due_schedules(pg_store, registry, settings_with()).fired == 0
    jobs = scheduled_jobs(db, schedule.id)
    assert [datetime.fromisoformat(t) for _, t in jobs] == [missed]
    now, next_run_at = db.execute(
        "select now(), next_run_at from public.ai_job_schedules where id = %s", (schedule.id,)).fetchone()
    assert now < next_run_at <= now + timedelta(minutes=1)  # the next tick after now, not after the missed one


def test_fire_is_compare_and_set(db: psycopg.Connection, pg_store: PostgresStore, make_user) -> None:
    user = make_user()
    tick = utc(2026, 1, 1)
    schedule = make_schedule(pg_store, user, "* * * * *", next_run_at=tick)
    first = pg_store.fire_schedule(schedule.id, expected_next=tick, new_next=tick + timedelta(minutes=1), job={})
    again = pg_store.fire_schedule(schedule.id, expected_next=tick, new_next=tick + timedelta(minutes=1), job={})
    assert first.fired and first.created and first.job_id is not None
    assert not again.fired
    # even with next_run_at put back by hand, the tick's idempotency key yields the same job
    db.execute("update public.ai_job_schedules set next_run_at = %s where id = %s", (tick, schedule.id))
    replay = pg_store.fire_schedule(schedule.id, expected_next=tick, new_next=tick + timedelta(minutes=1), job={})
    assert replay.fired and not replay.created and replay.job_id == first.job_id
    assert len(scheduled_jobs(db, schedule.id)) == 1


def test_refused_enqueue_skips_the_tick_and_records_why(db: psycopg.Connection, pg_store: PostgresStore, make_user,
                                                        registry: JobRegistry) -> None:
    user = make_user()
    schedule = make_schedule(pg_store, user, "* * * * *", next_run_at=utc(2026, 1, 1))
    for _ in range(2):  # the user is at the active-job cap
        db.execute("insert into public.ai_jobs (user_id, job_type) values (%s, 'bench.noop')", (user,))
    report = fire_due_schedules(pg_store, registry, settings_with().model_copy(update={"max_active_per_user": 2}))
    assert (report.fired, report.failed) == (0, 1)
    row = db.execute("select last_error, next_run_at > now() from public.ai_job_schedules where id = %s",
                     (schedule.id,)).fetchone()
    assert row[0]["code"] == "AJ001" and row[1]
    assert scheduled_jobs(db, schedule.id) == []


class _Unbuildable(BaseModel):
    """An input whose validation breaks in a way no schedule should (as a user schema
    nested deeply enough to exhaust the stack did in the sweep's deeper fire path)."""

    depth: int

    @field_validator("depth")
    @classmethod
    def _blow_up(cls, depth: int) -> int:
        if depth > 100:
            raise RecursionError("maximum recursion depth exceeded")
        return depth


def test_one_schedules_broken_input_does_not_stop_the_others(db: psycopg.Connection, pg_store: PostgresStore,
                                                              make_user) -> None:
    reg = load_job_modules(demo=True)
    local = JobRegistry()
    local._definitions = dict(reg._definitions)  # noqa: SLF001 - a registry of our own for this test

    @local.job("test.unbuildable", input=_Unbuildable, output=_Unbuildable)
    def unbuildable(data: _Unbuildable, ctx: Any) -> _Unbuildable:
        return data

    hostile, victim = make_user(), make_user()
    tick = utc(2026, 1, 1)
    poisoned = pg_store.create_schedule(hostile, name="poison", job_type="test.unbuildable", input={"depth": 500},
                                        cron="* * * * *", timezone="UTC", next_run_at=tick)
    fine = make_schedule(pg_store, victim, "* * * * *", next_run_at=tick + timedelta(minutes=1))
    report = fire_due_schedules(pg_store, local, settings_with())
    assert (report.fired, report.failed) == (1, 1)
    assert len(scheduled_jobs(db, fine.id)) == 1 and scheduled_jobs(db, poisoned.id) == []
    error, moved = db.execute("select last_error, next_run_at > now() from public.ai_job_schedules where id = %s",
                              (poisoned.id,)).fetchone()
    assert error["code"] == "schedule_job_unbuildable" and "RecursionError" in error["message"] and moved


def test_paused_jobs_hold_the_cap_against_schedule_ticks_as_against_the_api(
    db: psycopg.Connection, pg_store: PostgresStore, make_user, registry: JobRegistry
) -> None:
    """The cap counts pending, running and paused jobs (a paused job keeps its place).
    Ticks used to enqueue through ai_jobs_enqueue_v3, whose cap ignored paused jobs: a user
    at the cap could pause jobs, let a schedule queue one per tick, then resume them all."""
    user = make_user()
    settings = settings_with().model_copy(update={"max_active_per_user": 2})
    jobs = [pg_store.enqueue(registry.new_job(user, "example.countdown", COUNTDOWN, max_active=2)).job
            for _ in range(2)]
    for job in jobs:
        assert pg_store.pause(job.id, user_id=user).status.value == "paused"
    schedule = make_schedule(pg_store, user, "* * * * *", next_run_at=utc(2026, 1, 1))
    report = fire_due_schedules(pg_store, registry, settings)
    assert (report.fired, report.failed) == (0, 1)
    row = db.execute("select last_error from public.ai_job_schedules where id = %s", (schedule.id,)).fetchone()
    assert row[0]["code"] == "AJ001" and "paused" in row[0]["message"]
    assert scheduled_jobs(db, schedule.id) == []
    # below the cap the next tick fires, and a replay of a tick still returns its job at the cap
    pg_store.request_cancel_tree(jobs[0].id, user_id=user)
    db.execute("update public.ai_job_schedules set next_run_at = %s where id = %s", (utc(2026, 1, 2), schedule.id))
    assert fire_due_schedules(pg_store, registry, settings).fired == 1
    [(job_id, _)] = scheduled_jobs(db, schedule.id)
    tick = utc(2026, 1, 2)
    db.execute("update public.ai_job_schedules set next_run_at = %s where id = %s", (tick, schedule.id))
    replay = pg_store.fire_schedule(schedule.id, expected_next=tick, new_next=tick + timedelta(minutes=1),
                                    job={"max_active": 2})
    assert replay.fired and replay.error is None and not replay.created and str(replay.job_id) == job_id


def test_paused_schedule_does_not_fire_and_resume_skips_missed_ticks(
    db: psycopg.Connection, pg_store: PostgresStore, make_user, registry: JobRegistry
) -> None:
    user = make_user()
    schedule = make_schedule(pg_store, user, "* * * * *", next_run_at=utc(2026, 1, 1))
    paused = pg_store.set_schedule_paused(schedule.id, user_id=user, paused=True)
    assert paused.paused
    assert pg_store.set_schedule_paused(schedule.id, user_id=user, paused=True) == paused  # a repeat writes nothing
    assert fire_due_schedules(pg_store, registry, settings_with()).fired == 0
    assert db.execute("select public.ai_jobs_next_due_v2(null)").fetchone()[0] is None  # paused: not due
    upcoming = next_tick("* * * * *", "UTC", datetime.now(UTC))
    resumed = pg_store.set_schedule_paused(schedule.id, user_id=user, paused=False, next_run_at=upcoming)
    assert not resumed.paused and resumed.next_run_at == upcoming
    assert fire_due_schedules(pg_store, registry, settings_with()).fired == 0
    assert scheduled_jobs(db, schedule.id) == []
    pg_store.delete_schedule(schedule.id, user_id=user)
    assert db.execute("select count(*) from public.ai_job_schedules where id = %s", (schedule.id,)).fetchone()[0] == 0


def test_deployment_schedules_are_upserted_idempotently(db: psycopg.Connection, pg_store: PostgresStore,
                                                         make_user) -> None:
    from ai_jobs.schedules import upsert_deployment_schedules

    service_user = make_user()
    reg = load_job_modules(demo=True)
    local = JobRegistry()
    local._definitions = dict(reg._definitions)  # noqa: SLF001 - a registry of our own for this test
    local.schedule("nightly-noop", cron="0 3 * * *", type="example.countdown", input=COUNTDOWN, timezone=BERLIN)
    settings = settings_with(run_as=service_user)
    assert upsert_deployment_schedules(pg_store, local, settings) == 1
    assert upsert_deployment_schedules(pg_store, local, settings) == 0  # unchanged: nothing written
    row = db.execute("select user_id, run_as, cron, next_run_at from public.ai_job_schedules where name = 'nightly-noop'"
                     ).fetchone()
    assert row[0] is None and row[1] == service_user and row[2] == "0 3 * * *"
    assert row[3].astimezone(UTC).hour in (1, 2)  # 03:00 Berlin
    local.schedule("nightly-noop", cron="0 4 * * *", type="example.countdown", input=COUNTDOWN, timezone=BERLIN)
    assert upsert_deployment_schedules(pg_store, local, settings) == 1
    assert db.execute("select count(*) from public.ai_job_schedules where name = 'nightly-noop'").fetchone()[0] == 1
    db.execute("delete from public.ai_job_schedules where user_id is null")


def test_next_due_v2_and_wake_v2_see_due_schedules(db: psycopg.Connection, pg_store: PostgresStore,
                                                   make_user) -> None:
    user = make_user()
    db.execute("delete from public.ai_job_schedules")
    soon = datetime.now(UTC) + timedelta(seconds=30)
    make_schedule(pg_store, user, "* * * * *", next_run_at=soon)
    due_in = db.execute("select public.ai_jobs_next_due_v2(null)").fetchone()[0]
    assert 25 < due_in <= 30
    assert db.execute("select public.ai_jobs_next_due_v2(array['ai.generate'])").fetchone()[0] is None
    assert db.execute("select public.ai_jobs_wake_v2()").fetchone()[0] == "idle"
    db.execute("update public.ai_job_schedules set next_run_at = now() - interval '1 second'")
    with pytest.raises(psycopg.Error, match="pg_net"):  # due: it tries to wake the app (no pg_net here)
        db.execute("select public.ai_jobs_wake_v2()")
    db.execute("update public.ai_job_schedules set paused = true")
    assert db.execute("select public.ai_jobs_wake_v2()").fetchone()[0] == "idle"


# -- RLS -------------------------------------------------------------------------------------


def test_rls_owner_reads_own_schedules_only_and_writes_nothing(db: psycopg.Connection, pg_store: PostgresStore,
                                                               make_user, database_url: str) -> None:
    alice, bob = make_user(), make_user()
    mine = make_schedule(pg_store, alice, "* * * * *")
    make_schedule(pg_store, bob, "* * * * *")
    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            act_as(conn, {"role": "authenticated", "sub": str(alice)})
            rows = conn.execute("select id from public.ai_job_schedules").fetchall()
            assert rows == [(mine.id,)]
        for statement in (
            "update public.ai_job_schedules set paused = true",
            "delete from public.ai_job_schedules",
            f"insert into public.ai_job_schedules (user_id, name, job_type, cron, next_run_at) "
            f"values ('{alice}', 'x', 'bench.noop', '* * * * *', now())",
            f"select public.ai_jobs_fire_schedule_v1('{mine.id}', now(), now() + interval '1 minute')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                act_as(conn, {"role": "authenticated", "sub": str(alice)})
                conn.execute(statement)
        with conn.transaction():
            act_as(conn, {"role": "anon"})
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select id from public.ai_job_schedules")


# -- both store adapters ------------------------------------------------------------------


def test_store_adapters_fire_list_pause_delete(store, db: psycopg.Connection, make_user,
                                               registry: JobRegistry) -> None:
    """The same calls through psycopg and through PostgREST (timestamps survive the JSON
    round trip exactly, or the compare-and-set would never match)."""
    user, other = make_user(), make_user()
    tick = datetime.now(UTC).replace(microsecond=123456) - timedelta(seconds=5)
    created = store.create_schedule(user, name="a", job_type="example.countdown", input=COUNTDOWN,
                                    cron="* * * * *", timezone=BERLIN, next_run_at=tick, max_schedules=2)
    store.create_schedule(user, name="b", job_type="example.countdown", input=COUNTDOWN, cron="0 * * * *",
                          timezone="UTC", next_run_at=tick + timedelta(days=1), max_schedules=2)
    from ai_jobs.errors import ActiveJobLimitError, JobNotFoundError

    with pytest.raises(ActiveJobLimitError):
        store.create_schedule(user, name="c", job_type="example.countdown", input=COUNTDOWN, cron="0 * * * *",
                              timezone="UTC", next_run_at=tick, max_schedules=2)
    page, cursor = store.list_schedules(user_id=user, limit=1)
    assert [s.name for s in page] == ["b"] and cursor is not None
    page, cursor = store.list_schedules(user_id=user, limit=1, cursor=cursor)
    assert [s.name for s in page] == ["a"] and page[0].next_run_at == tick
    [(due, db_now)] = [(s, n) for s, n in store.due_schedules() if s.id == created.id]
    assert due.next_run_at == tick and db_now >= tick
    report = fire_due_schedules(store, registry, settings_with())
    assert report.fired == 1
    assert len(scheduled_jobs(db, created.id)) == 1
    with pytest.raises(JobNotFoundError):
        store.set_schedule_paused(created.id, user_id=other, paused=True)
    with pytest.raises(JobNotFoundError):
        store.delete_schedule(created.id, user_id=other)
    assert store.set_schedule_paused(created.id, user_id=user, paused=True).paused
    assert store.get_schedule(created.id, user_id=user).paused
    store.delete_schedule(created.id, user_id=user)
    with pytest.raises(JobNotFoundError):
        store.get_schedule(created.id, user_id=user)


# -- the HTTP API, end to end ------------------------------------------------------------------


def test_api_schedule_fires_through_the_sweep_route(database_url: str, db: psycopg.Connection, make_user) -> None:
    from ai_jobs.http.app import create_app
    from ai_jobs.http.services import Services
    from tests.conftest import JWT_SECRET, user_token

    user, other = make_user(), make_user()
    settings = Settings(store="postgres", database_url=database_url, jwt_secret=JWT_SECRET, cron_secret="cron",
                        worker_budget_seconds=6, schedules=ScheduleSettings(min_interval_seconds=1))
    services = Services(settings=settings, registry=load_job_modules(demo=True))
    try:
        client = create_app(services).test_client()
        auth = {"Authorization": f"Bearer {user_token(user)}"}
        r = client.post("/api/schedules", json={"type": "example.countdown", "input": COUNTDOWN,
                                                "cron": "* * * * * *", "name": "every second"}, headers=auth)
        assert r.status_code == 201, r.json
        schedule_id = r.json["id"]
        # someone else's schedule answers 404 on every route
        intruder = {"Authorization": f"Bearer {user_token(other)}"}
        for method, suffix in (("POST", "/pause"), ("POST", "/resume"), ("DELETE", "")):
            r = client.open(f"/api/schedules/{schedule_id}{suffix}", method=method, headers=intruder)
            assert (r.status_code, r.json["code"]) == (404, "schedule_not_found")
        assert client.get("/api/schedules", headers=intruder).json["schedules"] == []
        time.sleep(1.1)
        r = client.get("/api/internal/sweep", headers={"Authorization": "Bearer cron"})
        assert r.status_code == 200 and r.json["schedules_fired"] == 1, r.json
        [(job_id, _)] = scheduled_jobs(db, uuid.UUID(schedule_id))
        job = client.get(f"/api/jobs/{job_id}", headers=auth).json
        assert job["user_id"] == str(user) and job["metadata"]["schedule_id"] == schedule_id
        assert job["status"] == "completed"  # the sweep ran what it fired
        listed = client.get("/api/schedules", headers=auth).json["schedules"]
        assert [s["last_job_id"] for s in listed] == [job_id]
        assert client.post(f"/api/schedules/{schedule_id}/pause", headers=auth).json["paused"] is True
        time.sleep(1.1)
        assert client.get("/api/internal/sweep", headers={"Authorization": "Bearer cron"}).json["schedules_fired"] == 0
        resumed = client.post(f"/api/schedules/{schedule_id}/resume", headers=auth).json
        assert resumed["paused"] is False and datetime.fromisoformat(resumed["next_run_at"]) > datetime.now(UTC)
        assert client.delete(f"/api/schedules/{schedule_id}", headers=auth).status_code == 204
        assert client.get("/api/schedules", headers=auth).json["schedules"] == []
        assert len(scheduled_jobs(db, uuid.UUID(schedule_id))) == 1  # the job it made is kept
    finally:
        services.close()


def test_api_refuses_bad_schedules_with_422(database_url: str, make_user) -> None:
    from ai_jobs.http.app import create_app
    from ai_jobs.http.services import Services
    from tests.conftest import JWT_SECRET, user_token

    settings = Settings(store="postgres", database_url=database_url, jwt_secret=JWT_SECRET)
    services = Services(settings=settings, registry=load_job_modules(demo=True))
    try:
        client = create_app(services).test_client()
        auth = {"Authorization": f"Bearer {user_token(make_user())}"}
        for body, code, field in (
            ({"cron": "every minute"}, "invalid_schedule", "cron"),
            ({"cron": "* * * * * *"}, "invalid_schedule", "cron"),  # every second: under the 60 s default
            ({"cron": "0 0 31 2 *"}, "invalid_schedule", "cron"),
            ({"timezone": "Not/AZone"}, "invalid_schedule", "timezone"),
            ({"type": "no.such_type"}, "unknown_job_type", "type"),
            ({"input": {"steps": 0}}, "invalid_input", "input.steps"),
            ({"cron": 5}, "invalid_body", "cron"),
        ):
            payload = {"type": "example.countdown", "input": COUNTDOWN, "cron": "*/5 * * * *", **body}
            r = client.post("/api/schedules", json=payload, headers=auth)
            assert r.status_code == 422 and r.mimetype == "application/problem+json", (body, r.json)
            assert r.json["code"] == code and r.json["errors"][0]["field"] == field, (body, r.json)
    finally:
        services.close()


def test_real_worker_processes_and_sweeps_fire_each_tick_once(db: psycopg.Connection, database_url: str,
                                                             make_user, registry: JobRegistry) -> None:
    """4 `ai-jobs worker` processes (their loop fires due ticks, then runs jobs) and 2
    concurrent sweeps over a per-second schedule: every tick has exactly one job, and
    the jobs run to completion."""
    import os
    import subprocess
    import sys

    user = make_user()
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "AI_JOBS_DEMO_JOB_TYPES": "1",
           "AI_JOBS_SCHEDULE_MIN_INTERVAL_SECONDS": "1", "AI_JOBS_WORKER_WAKEUP": "poll"}
    workers = [subprocess.Popen([sys.executable, "-m", "ai_jobs.cli", "worker", "--poll-interval", "0.05"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    stores = [PostgresStore(database_url, min_size=1, max_size=2) for _ in range(2)]
    stop = threading.Event()
    errors: list[BaseException] = []
    settings = settings_with(min_interval=1)

    def sweeper(store: PostgresStore) -> None:
        try:
            while not stop.is_set():
                sweep(store, Runner(store, registry), None, stale_pending_seconds=60, budget_seconds=0.2,
                      settings=settings)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=sweeper, args=(store,)) for store in stores]
    try:
        time.sleep(2)  # the workers are up (they import, connect and start polling)
        assert all(w.poll() is None for w in workers), [w.stderr.read() for w in workers if w.poll() is not None]
        schedule = make_schedule(stores[0], user, "* * * * * *")
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(scheduled_jobs(db, schedule.id)) < 6:
            time.sleep(0.1)
        stores[0].set_schedule_paused(schedule.id, user_id=user, paused=True)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        ticks = [tick for _, tick in scheduled_jobs(db, schedule.id)]
        assert len(ticks) >= 5 and len(set(ticks)) == len(ticks), Counter(ticks).most_common(3)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and db.execute(
                "select count(*) from public.ai_jobs where metadata ->> 'schedule_id' = %s and status <> 'completed'",
                (str(schedule.id),)).fetchone()[0]:
            time.sleep(0.1)
        assert db.execute("select count(*) from public.ai_jobs where metadata ->> 'schedule_id' = %s "
                          "and status = 'completed'", (str(schedule.id),)).fetchone()[0] == len(ticks)
    finally:
        stop.set()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        for store in stores:
            store.close()
