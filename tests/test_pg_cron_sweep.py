"""supabase/optional/pg_cron_sweep.sql, run against stand-ins for the pg_cron,
pg_net and Vault APIs (the extensions themselves are not installable here):
the file applies, schedules one job, and that job calls the sweep endpoint
with the cron secret."""

from __future__ import annotations

import psycopg

from ai_jobs.database.migrations import supabase_dir
from tests.test_migrations import fresh_database  # noqa: F401 - fixture

STANDINS = """
create schema cron;
create table cron.job (jobname text primary key, schedule text, command text);
create function cron.schedule(job_name text, schedule text, command text) returns bigint
language sql as $$
  insert into cron.job values (job_name, schedule, command)
  on conflict (jobname) do update set schedule = excluded.schedule, command = excluded.command
  returning 1::bigint $$;
create schema net;
create table net.requests (url text, headers jsonb, timeout_milliseconds int);
create function net.http_get(url text, params jsonb default '{}', headers jsonb default '{}',
                             timeout_milliseconds int default 2000) returns bigint
language sql as $$ insert into net.requests values (url, headers, timeout_milliseconds) returning 1::bigint $$;
create schema vault;
create table vault.decrypted_secrets (name text primary key, decrypted_secret text);
insert into vault.decrypted_secrets values
  ('ai_jobs_app_url', 'https://demo.vercel.app'), ('ai_jobs_cron_secret', 'cron-s3cret');
"""


def test_optional_pg_cron_schedule(fresh_database: str) -> None:  # noqa: F811
    sql = (supabase_dir() / "optional" / "pg_cron_sweep.sql").read_text()
    body = "\n".join(line for line in sql.splitlines() if not line.startswith("create extension"))
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(STANDINS)
        conn.execute(body)
        conn.execute(body)  # re-running replaces the schedule
        jobs = conn.execute("select jobname, schedule, command from cron.job").fetchall()
        assert [(j[0], j[1]) for j in jobs] == [("ai-jobs-sweep", "* * * * *")]
        conn.execute(jobs[0][2])  # what pg_cron will run every minute
        url, headers, timeout = conn.execute("select * from net.requests").fetchone()
    assert url == "https://demo.vercel.app/api/internal/sweep"
    assert headers == {"Authorization": "Bearer cron-s3cret"} and timeout == 5000
