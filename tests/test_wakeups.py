"""Wake-ups from Supabase Cron, run by the REAL pg_cron (Debian's 1.4.2) in a
PostgreSQL 15 cluster shaped like Supabase (tests/supabase_cluster.py: the
migrations are applied as the non-superuser `postgres`, as Supabase applies
them). Only pg_net's HTTP call and Vault's encryption are stood in for.

pg_cron 1.4 runs the job at the start of each minute, so the tick test waits
for three ticks (2 to 3 minutes) and checks everything it can per tick. The
plain-PostgreSQL tests at the bottom need no pg_cron and always run.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from ai_jobs.database.migrations import MigrationReport, migrate, migration_files
from ai_jobs.http.app import create_app
from ai_jobs.http.services import Services
from ai_jobs.settings import Settings
from tests.supabase_cluster import (
    SupabaseCluster,
    destroy_cluster,
    pg_cron_available,
    start_cluster,
    wait_for_run,
)

WAKEUPS_MIGRATION = next(p for p in migration_files() if p.name.endswith("_ai_jobs_wakeups.sql"))
SCHEDULES_MIGRATION = next(p for p in migration_files() if p.name.endswith("_schedules.sql"))
CLAIMABLE_MIGRATION = next(p for p in migration_files() if p.name.endswith("_wake_only_claimable.sql"))
APP_URL = "https://demo-app.example/"
CRON_SECRET = "cron-s3cret-for-tests"


def get_health(settings: Settings) -> tuple[int, dict[str, Any]]:
    """GET /api/health from the real app over the given store."""
    services = Services(settings=settings)
    try:
        response = create_app(services).test_client().get("/api/health")
        return response.status_code, response.get_json()
    finally:
        services.close()


def status_of(conn: psycopg.Connection) -> dict[str, Any]:
    return conn.execute("select public.ai_jobs_wakeup_status_v1()").fetchone()[0]


# -- the Supabase-shaped cluster with the real pg_cron --------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[SupabaseCluster, MigrationReport]]:
    if not pg_cron_available():
        if os.environ.get("CI"):
            pytest.fail("pg_cron is required in CI (make test installs Debian's postgresql-15-cron)")
        pytest.skip("pg_cron not installed (apt-get install postgresql-15-cron, or AI_JOBS_INSTALL_PGCRON=1 make test); "
                    "Supabase Cron tests skipped locally")
    instance = start_cluster()
    try:
        instance.prepare_database("postgres", pg_cron=True)
        report = migrate(instance.url("postgres"))  # as postgres, who is not a superuser
        yield instance, report
    finally:
        destroy_cluster(instance)


@pytest.fixture()
def pg(cluster: tuple[SupabaseCluster, MigrationReport]) -> Iterator[psycopg.Connection]:
    """`postgres`, the role migrations and the SQL editor use on Supabase."""
    with psycopg.connect(cluster[0].url("postgres"), autocommit=True) as conn:
        yield conn


@pytest.fixture()
def admin(cluster: tuple[SupabaseCluster, MigrationReport]) -> Iterator[psycopg.Connection]:
    with cluster[0].admin() as conn:
        yield conn


def requests_sent(admin: psycopg.Connection) -> list[tuple[str, str, dict[str, str], int]]:
    return admin.execute("select method, url, headers, timeout_milliseconds from net.http_request_queue order by id").fetchall()


def cluster_settings(cluster: SupabaseCluster, dbname: str = "postgres") -> Settings:
    return Settings(store="postgres", database_url=cluster.url("postgres", dbname))


def test_migrations_apply_as_supabase_applies_them(cluster, pg: psycopg.Connection) -> None:
    instance, report = cluster
    assert report.standin_applied is False and report.applied == [p.name for p in migration_files()]
    assert pg.execute("select rolsuper from pg_roles where rolname = current_user").fetchone() == (False,)
    owners = {r[0] for r in pg.execute(
        "select distinct pg_get_userbyid(proowner) from pg_proc where pronamespace = 'public'::regnamespace")}
    assert owners == {"postgres"}
    # Debian's pg_cron 1.4 rejects second-based schedules, so the migration fell back
    assert pg.execute("select extversion from pg_extension where extname = 'pg_cron'").fetchone()[0].startswith("1.4")
    with pytest.raises(psycopg.Error, match="invalid schedule"):
        pg.execute("select cron.schedule('probe', '5 seconds', 'select 1')")
    jobs = pg.execute("select jobid, jobname, schedule, command, username, active from cron.job").fetchall()
    # the schedules migration pointed the job at ai_jobs_wake_v2 (due schedules wake the app too)
    assert [j[1:] for j in jobs] == [("ai-jobs-wake", "* * * * *", "select public.ai_jobs_wake_v2()", "postgres", True)]
    # postgres cannot write cron.job itself (only cron.schedule can), as on Supabase
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        pg.execute("update cron.job set schedule = '* * * * *'")
    # re-applying the file keeps exactly one job, and drops the old every-minute sweep job
    pg.execute("select cron.schedule('ai-jobs-sweep', '* * * * *', 'select 1')")
    for _ in range(2):
        pg.execute(WAKEUPS_MIGRATION.read_text())
    pg.execute(SCHEDULES_MIGRATION.read_text())  # as `supabase db push` would, every file in order
    pg.execute(CLAIMABLE_MIGRATION.read_text())  # (which redefines ai_jobs_wake_v2 again)
    again = pg.execute("select jobid, jobname, schedule from cron.job").fetchall()
    assert again == [(jobs[0][0], "ai-jobs-wake", "* * * * *")]
    # only service_role (and the owner, who runs the job) may execute the new functions
    rows = pg.execute(
        "select p.proname, has_function_privilege('anon', p.oid, 'execute'), "
        "has_function_privilege('authenticated', p.oid, 'execute'), has_function_privilege('service_role', p.oid, 'execute') "
        "from pg_proc p where p.pronamespace = 'public'::regnamespace and p.proname ~ 'wake'").fetchall()
    # 5, plus wake_v2, schedule_wake_v2 and wakeup_status_v2 of the schedules migration
    assert len(rows) == 8 and all(not anon and not auth and service for _, anon, auth, service in rows)
    # nor anon or authenticated any sequence, whatever Supabase's default privileges gave them
    sequences = pg.execute(
        "select c.relname, has_sequence_privilege('anon', c.oid, 'usage,select,update'), "
        "has_sequence_privilege('authenticated', c.oid, 'usage,select,update') "
        "from pg_class c where c.relnamespace = 'public'::regnamespace and c.relkind = 'S'").fetchall()
    assert sequences == [("ai_jobs_spend_id_seq", False, False)]
    with pg.transaction(), pytest.raises(psycopg.errors.InsufficientPrivilege):
        pg.execute("set local role anon")
        pg.execute("select setval('public.ai_jobs_spend_id_seq', 1, false)")


def test_schedule_for_pg_cron_versions(pg: psycopg.Connection) -> None:
    expected = {"1.4.2": "* * * * *", "1.4-1": "* * * * *", "1.5.0": "5 seconds", "1.6.4": "5 seconds",
                "1.10.0": "5 seconds", "2.0": "5 seconds", "1.4.9": "* * * * *", "": "* * * * *"}
    with pg.transaction():
        pg.execute("set local role service_role")
        got = {v: pg.execute("select public.ai_jobs_wake_schedule_v1(%s)", (v,)).fetchone()[0] for v in expected}
        assert pg.execute("select public.ai_jobs_wake_schedule_v1(null)").fetchone()[0] == "* * * * *"
    assert got == expected
    with pg.transaction(), pytest.raises(psycopg.errors.InsufficientPrivilege):
        pg.execute("set local role anon")
        pg.execute("select public.ai_jobs_wake_schedule_v1('1.6.4')")


def test_missing_secrets_reported_before_any_wake_up(cluster, pg: psycopg.Connection) -> None:
    """Nothing due yet, so no run has failed; health still says the URL secret is missing."""
    status = status_of(pg)
    assert (status["mode"], status["schedule"]) == ("pg_cron", "* * * * *")
    assert status["problem"] == ("Vault secret ai_jobs_app_url is missing: run "
                                 "select vault.create_secret('https://your-app.vercel.app', 'ai_jobs_app_url');")
    code, body = get_health(cluster_settings(cluster[0]))
    assert code == 503 and body["status"] == "degraded" and body["database"] == "ok"
    assert body["detail"] == "wake-ups: " + status["problem"] and body["wakeups"]["mode"] == "pg_cron"


def test_wake_function_decides_by_due_work(pg: psycopg.Connection, admin: psycopg.Connection) -> None:
    """Called directly (the tick test below has pg_cron call it): idle unless a pending job
    is due or a running job's lease has expired. Runs as its owner for service_role too."""
    user = uuid.uuid4()
    pg.execute("insert into auth.users (id) values (%s)", (user,))
    pg.execute("select vault.create_secret(%s, 'ai_jobs_app_url'), vault.create_secret(%s, 'ai_jobs_cron_secret')",
               (APP_URL, CRON_SECRET))
    try:
        admin.execute("delete from net.http_request_queue")
        assert pg.execute("select public.ai_jobs_wake_v1()").fetchone()[0] == "idle"
        pg.execute("insert into public.ai_jobs (user_id, job_type, run_at) values (%s, 'a.later', now() + interval '1 hour')",
                   (user,))
        pg.execute("insert into public.ai_jobs (user_id, job_type, status, locked_by, lease_expires_at, started_at) "
                   "values (%s, 'a.held', 'running', 'w1', now() + interval '1 minute', now())", (user,))
        assert pg.execute("select public.ai_jobs_wake_v1()").fetchone()[0] == "idle"
        assert requests_sent(admin) == []
        # uncommitted, so a cron tick meanwhile still sees nothing due
        with pg.transaction(force_rollback=True):
            pg.execute("update public.ai_jobs set lease_expires_at = now() - interval '1 second' where job_type = 'a.held'")
            pg.execute("set local role service_role")  # cannot read Vault itself: the function is SECURITY DEFINER
            assert pg.execute("select public.ai_jobs_wake_v1()").fetchone()[0] == "woken"
            pg.execute("reset role")
            assert requests_sent(pg) == [
                ("GET", "https://demo-app.example/api/internal/sweep", {"Authorization": f"Bearer {CRON_SECRET}"}, 5000)]
    finally:
        pg.execute("delete from public.ai_jobs")
        pg.execute("delete from auth.users where id = %s", (user,))
        pg.execute("delete from vault.secrets")
        admin.execute("delete from net.http_request_queue")


def test_wake_v2_also_wakes_for_a_due_schedule(pg: psycopg.Connection, admin: psycopg.Connection) -> None:
    """ai_jobs_wake_v2 (what pg_cron runs since the schedules migration): a due, active
    schedule wakes the app like a due job; a paused one or one due later does not."""
    user = uuid.uuid4()
    pg.execute("insert into auth.users (id) values (%s)", (user,))
    pg.execute("select vault.create_secret(%s, 'ai_jobs_app_url'), vault.create_secret(%s, 'ai_jobs_cron_secret')",
               (APP_URL, CRON_SECRET))
    try:
        admin.execute("delete from net.http_request_queue")
        pg.execute("insert into public.ai_job_schedules (user_id, name, job_type, cron, next_run_at) "
                   "values (%s, 's', 'a.sched', '* * * * *', now() + interval '1 hour')", (user,))
        assert pg.execute("select public.ai_jobs_wake_v2()").fetchone()[0] == "idle"
        with pg.transaction(force_rollback=True):
            pg.execute("update public.ai_job_schedules set next_run_at = now() - interval '1 second', paused = true")
            assert pg.execute("select public.ai_jobs_wake_v2()").fetchone()[0] == "idle"
        with pg.transaction(force_rollback=True):
            pg.execute("update public.ai_job_schedules set next_run_at = now() - interval '1 second'")
            pg.execute("set local role service_role")
            assert pg.execute("select public.ai_jobs_wake_v2()").fetchone()[0] == "woken"
            pg.execute("reset role")
            assert requests_sent(pg) == [
                ("GET", "https://demo-app.example/api/internal/sweep", {"Authorization": f"Bearer {CRON_SECRET}"}, 5000)]
            assert pg.execute("select public.ai_jobs_wake_v1()").fetchone()[0] == "idle"  # v1 never looked
        # health (wakeup_status_v2) flags a wake job left on v1, e.g. rescheduled with the old function
        with pg.transaction(force_rollback=True):
            assert pg.execute("select public.ai_jobs_wakeup_status_v2()").fetchone()[0]["problem"] is None
            pg.execute("select public.ai_jobs_schedule_wake_v1()")
            assert pg.execute("select public.ai_jobs_wakeup_status_v2()").fetchone()[0]["problem"] == (
                "the ai-jobs-wake job runs select public.ai_jobs_wake_v1(), which does not start schedules: "
                "run select public.ai_jobs_schedule_wake_v2();")
            assert status_of(pg)["problem"] is None  # v1 does not know
    finally:
        pg.execute("delete from public.ai_job_schedules")
        pg.execute("delete from auth.users where id = %s", (user,))
        pg.execute("delete from vault.secrets")
        admin.execute("delete from net.http_request_queue")


def test_wake_v2_stays_idle_for_jobs_held_back_by_their_concurrency_limit(
    pg: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """A backlog behind its owner's limit (3 running, user_limit 3) is not work: no sweep
    every 5 s for as long as it lasts. Once a slot frees it is work again."""
    user = uuid.uuid4()
    pg.execute("insert into auth.users (id) values (%s)", (user,))
    pg.execute("select vault.create_secret(%s, 'ai_jobs_app_url'), vault.create_secret(%s, 'ai_jobs_cron_secret')",
               (APP_URL, CRON_SECRET))
    try:
        admin.execute("delete from net.http_request_queue")
        pg.execute("insert into public.ai_jobs (user_id, job_type, status, locked_by, lease_expires_at, started_at, "
                   "attempts, user_limit) select %s, 'a.held', 'running', 'w1', now() + interval '10 minutes', now(), 1, 3 "
                   "from generate_series(1, 3)", (user,))
        pg.execute("insert into public.ai_jobs (user_id, job_type, run_at, user_limit) "
                   "select %s, 'a.held', now() - interval '2 minutes', 3 from generate_series(1, 50)", (user,))
        with pg.transaction(force_rollback=True):
            pg.execute("set local role service_role")
            assert pg.execute("select public.ai_jobs_wake_v2()").fetchone()[0] == "idle"
        assert requests_sent(admin) == []
        with pg.transaction(force_rollback=True):
            pg.execute("update public.ai_jobs set status = 'completed', result = '{}', locked_by = null, "
                       "lease_expires_at = null, finished_at = now() "
                       "where id = (select id from public.ai_jobs where status = 'running' limit 1)")
            assert pg.execute("select public.ai_jobs_wake_v2()").fetchone()[0] == "woken"
            assert len(requests_sent(pg)) == 1
    finally:
        pg.execute("delete from public.ai_jobs")
        pg.execute("delete from auth.users where id = %s", (user,))
        pg.execute("delete from vault.secrets")
        admin.execute("delete from net.http_request_queue")


def test_every_wake_up_run_writes_the_parent_counts_the_throttle_held_back(
    pg: psycopg.Connection, admin: psycopg.Connection
) -> None:
    """Two of three children finish within 0.5 s: the trigger's throttle holds the second
    recount back, and the next wake-up run writes it (no HTTP call: nothing is due)."""
    user = uuid.uuid4()
    pg.execute("insert into auth.users (id) values (%s)", (user,))
    try:
        admin.execute("delete from net.http_request_queue")
        parent = pg.execute(
            "insert into public.ai_jobs (user_id, job_type, run_at, wait_reason, waiting, children) "
            "values (%s, 'a.parent', now() + interval '1 hour', 'waiting_for_children', '{}', "
            "jsonb_build_object('total', 3, 'done', 0, 'failed', 0, 'active', 3, 'at', now() - interval '1 second')) "
            "returning id", (user,)).fetchone()[0]
        kids = [r[0] for r in pg.execute(
            "insert into public.ai_jobs (user_id, job_type, parent_id, status, attempts, locked_by, lease_expires_at, "
            "started_at) select %s, 'a.child', %s, 'running', 1, 'w', now() + interval '10 minutes', now() "
            "from generate_series(1, 3) returning id", (user, parent)).fetchall()]
        for kid in kids[:2]:
            pg.execute("update public.ai_jobs set status = 'completed', result = '{}', locked_by = null, "
                       "lease_expires_at = null, finished_at = now() where id = %s", (kid,))
        done = "select children ->> 'done', progress_message from public.ai_jobs where id = %s"
        assert pg.execute(done, (parent,)).fetchone() == ("1", "1 of 3 children done")
        time.sleep(0.55)
        with pg.transaction():
            pg.execute("set local role service_role")
            assert pg.execute("select public.ai_jobs_wake_v2()").fetchone()[0] == "idle"
        assert pg.execute(done, (parent,)).fetchone() == ("2", "2 of 3 children done")
        assert requests_sent(admin) == []
    finally:
        pg.execute("delete from public.ai_jobs")
        pg.execute("delete from auth.users where id = %s", (user,))


def test_real_pg_cron_wakes_the_app_only_when_work_is_due(cluster, pg: psycopg.Connection,
                                                          admin: psycopg.Connection) -> None:
    """Three pg_cron ticks: a due job -> one GET with the secret; a job due later -> no
    request; a due job with the cron secret missing -> the run fails loudly, status and
    /api/health (503) say why."""
    settings = cluster_settings(cluster[0])
    user = uuid.uuid4()
    pg.execute("insert into auth.users (id) values (%s)", (user,))
    pg.execute("select vault.create_secret(%s, 'ai_jobs_app_url'), vault.create_secret(%s, 'ai_jobs_cron_secret')",
               (APP_URL, CRON_SECRET))
    [(job_id,)] = pg.execute("insert into public.ai_jobs (user_id, job_type, run_at) "
                             "values (%s, 'a.delayed', now() - interval '1 second') returning id", (user,)).fetchall()
    try:
        # tick 1: work is due
        admin.execute("delete from net.http_request_queue")
        since: datetime = pg.execute("select now()").fetchone()[0]
        run = wait_for_run(pg, since)
        assert run["status"] == "succeeded", run
        assert requests_sent(admin) == [
            ("GET", "https://demo-app.example/api/internal/sweep", {"Authorization": f"Bearer {CRON_SECRET}"}, 5000)]
        status = status_of(pg)
        assert (status["mode"], status["problem"]) == ("pg_cron", None)
        assert status["last_run"]["status"] == "succeeded"
        assert datetime.fromisoformat(status["last_run"]["start_time"]) == run["start_time"]
        code, body = get_health(settings)
        assert code == 200 and body["status"] == "ok" and body["detail"] is None
        assert body["wakeups"]["mode"] == "pg_cron" and body["wakeups"]["schedule"] == "* * * * *"

        # tick 2: the job was rescheduled for later (a retry-after): nothing to wake
        pg.execute("update public.ai_jobs set run_at = now() + interval '1 hour' where id = %s", (job_id,))
        admin.execute("delete from net.http_request_queue")
        since = pg.execute("select now()").fetchone()[0]
        assert wait_for_run(pg, since)["status"] == "succeeded"
        assert requests_sent(admin) == []

        # tick 3: due again, but the cron secret is gone
        pg.execute("update public.ai_jobs set run_at = now() - interval '1 second' where id = %s", (job_id,))
        pg.execute("delete from vault.secrets where name = 'ai_jobs_cron_secret'")
        admin.execute("delete from net.http_request_queue")
        since = pg.execute("select now()").fetchone()[0]
        run = wait_for_run(pg, since)
        message = ("Vault secret ai_jobs_cron_secret is missing: run "
                   "select vault.create_secret('<the CRON_SECRET set in Vercel>', 'ai_jobs_cron_secret');")
        assert run["status"] == "failed" and message in str(run["return_message"]), run
        assert requests_sent(admin) == []
        status = status_of(pg)
        assert status["last_run"]["status"] == "failed" and status["last_run"]["message"] == message
        assert status["problem"] == "the last wake-up failed: " + message
        code, body = get_health(settings)
        assert code == 503 and body["status"] == "degraded" and body["database"] == "ok"
        assert body["detail"] == "wake-ups: the last wake-up failed: " + message
        assert body["wakeups"]["last_run"]["status"] == "failed"
        assert CRON_SECRET not in json.dumps(body)
    finally:
        pg.execute("delete from public.ai_jobs")
        pg.execute("delete from auth.users where id = %s", (user,))
        pg.execute("select vault.create_secret(%s, 'ai_jobs_cron_secret') "
                   "where not exists (select 1 from vault.secrets where name = 'ai_jobs_cron_secret')", (CRON_SECRET,))


def test_status_problems_without_waiting(cluster, pg: psycopg.Connection, admin: psycopg.Connection) -> None:
    """Each problem checked inside a rolled-back REPEATABLE READ transaction, so a cron
    tick meanwhile neither changes what the status sees nor is lost."""
    pg.execute("select vault.create_secret(%s, 'ai_jobs_cron_secret') "
               "where not exists (select 1 from vault.secrets where name = 'ai_jobs_cron_secret')", (CRON_SECRET,))
    pg.execute("select vault.create_secret(%s, 'ai_jobs_app_url') "
               "where not exists (select 1 from vault.secrets where name = 'ai_jobs_app_url')", (APP_URL,))

    def in_snapshot(conn: psycopg.Connection, *statements: str) -> dict[str, Any]:
        with psycopg.connect(conn.info.dsn) as tx:
            tx.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            for statement in statements:
                tx.execute(statement)
            result = tx.execute("select public.ai_jobs_wakeup_status_v1()").fetchone()[0]
            tx.rollback()
        return result

    forget_runs = "delete from cron.job_run_details where jobid = (select jobid from cron.job where jobname = 'ai-jobs-wake')"
    # no run recorded for more than 3 intervals (pg_cron not running jobs for this database)
    stale = in_snapshot(
        pg,
        forget_runs,
        "update public.ai_jobs_wakeup_schedule set scheduled_at = now() - interval '3 minutes 1 second'",
    )
    assert stale["mode"] == "pg_cron" and stale["last_run"] is None
    assert stale["problem"].startswith("no wake-up run recorded since ")
    assert stale["problem"].endswith("(schedule * * * * *): pg_cron is not running jobs for this database")
    fresh = in_snapshot(
        pg,
        forget_runs,
        "update public.ai_jobs_wakeup_schedule set scheduled_at = now() - interval '2 minutes 59 seconds'",
    )
    assert fresh["problem"] is None
    # the job was unscheduled by hand
    gone = in_snapshot(pg, "select cron.unschedule('ai-jobs-wake')")
    assert gone == {"mode": "none", "schedule": None, "last_run": None, "problem":
                    "pg_cron is enabled but the ai-jobs-wake job is not scheduled: "
                    "run select public.ai_jobs_schedule_wake_v1();"}
    # pg_net not enabled (Supabase would own net.http_get; drop it as supabase_admin)
    no_net = in_snapshot(admin, "drop function net.http_get(text, jsonb, jsonb, integer)", forget_runs)
    assert no_net["problem"].startswith("pg_net is not enabled (net.http_get is missing): run create extension")


def test_pause_and_resume(cluster, pg: psycopg.Connection) -> None:
    assert pg.execute("select public.ai_jobs_schedule_wake_v1(p_enabled => false)").fetchone()[0] == "* * * * *"
    try:
        assert pg.execute("select active from cron.job where jobname = 'ai-jobs-wake'").fetchall() == [(False,)]
        status = status_of(pg)
        assert (status["mode"], status["schedule"], status["problem"]) == ("none", "* * * * *", None)
        pg.execute(WAKEUPS_MIGRATION.read_text())  # re-applying leaves a paused job paused
        pg.execute(SCHEDULES_MIGRATION.read_text())  # and so does pointing it at ai_jobs_wake_v2
        assert pg.execute("select active from cron.job where jobname = 'ai-jobs-wake'").fetchall() == [(False,)]
        code, body = get_health(cluster_settings(cluster[0]))
        assert code == 200 and body["wakeups"]["mode"] == "none" and body["detail"] is None
    finally:
        assert pg.execute("select public.ai_jobs_schedule_wake_v2()").fetchone()[0] == "* * * * *"
    assert pg.execute("select jobname, schedule, active from cron.job").fetchall() == [("ai-jobs-wake", "* * * * *", True)]
    assert pg.execute("select command from cron.job").fetchone()[0] == "select public.ai_jobs_wake_v2()"
    assert status_of(pg)["mode"] == "pg_cron"


def test_supabase_database_without_pg_cron(cluster, pg: psycopg.Connection) -> None:
    """Enabling pg_cron fails here (postgres has no supautils): the migration warns and
    carries on; status and health name the problem and the fix."""
    instance = cluster[0]
    pg.execute("create database no_cron")
    instance.prepare_database("no_cron", pg_cron=False)
    report = migrate(instance.url("postgres", "no_cron"))
    assert report.applied == [p.name for p in migration_files()]
    assert "ai-jobs: could not enable pg_cron" in instance.log()
    with psycopg.connect(instance.url("postgres", "no_cron")) as conn:
        status = status_of(conn)
    assert (status["mode"], status["schedule"], status["last_run"]) == ("none", None, None)
    assert status["problem"].startswith("Supabase Cron is not enabled (pg_cron is not installed)")
    code, body = get_health(cluster_settings(instance, "no_cron"))
    # health reads wakeup_status_v2, which names the v2 function in its fix
    assert code == 503 and body["detail"] == "wake-ups: " + status["problem"].replace(
        "ai_jobs_schedule_wake_v1()", "ai_jobs_schedule_wake_v2()")


# -- plain PostgreSQL (the pgserver test database): no pg_cron, nothing wrong -----------------


def test_plain_postgres_health_ok_without_wakeups(database_url: str, db: psycopg.Connection) -> None:
    assert status_of(db) == {"mode": "none", "schedule": None, "last_run": None, "problem": None}
    code, body = get_health(Settings(store="postgres", database_url=database_url))
    assert code == 200 and body["status"] == "ok" and body["database"] == "ok" and body["detail"] is None
    assert body["wakeups"] == {"mode": "none", "schedule": None, "last_run": None, "problem": None}


def test_health_when_the_database_is_unreachable() -> None:
    """A short reason, never the connection string or the key."""
    code, body = get_health(Settings(store="postgres", database_url="postgresql://ai:hunter2@127.0.0.1:9/jobs"))
    assert code == 503 and body["status"] == "degraded" and body["database"] == "unavailable"
    assert body["wakeups"] is None and body["detail"].startswith("database unavailable: ")
    code, rest = get_health(Settings(store="supabase", supabase_url="http://127.0.0.1:9",
                                     supabase_service_key="service-key-s3cret"))
    assert code == 503 and rest["database"] == "unavailable"
    assert rest["detail"] == "database unavailable: connection refused"
    for text in ("hunter2", "service-key-s3cret", "127.0.0.1", ":9"):
        assert text not in json.dumps(body) + json.dumps(rest)
