"""The CLI as a new user runs it: real subprocesses, real databases."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

from ai_jobs.database.migrations import migration_files
from bench._local_stack import start_dev
from tests.test_migrations import fresh_database  # noqa: F401 - fixture

AI_JOBS = [sys.executable, "-m", "ai_jobs.cli"]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(AI_JOBS + args, env=env, capture_output=True, text=True, timeout=120)


def test_migrate_command_against_database_url(fresh_database: str) -> None:  # noqa: F811
    env = {**os.environ, "DATABASE_URL": fresh_database}
    first = run(["migrate"], env)
    assert first.returncode == 0, first.stderr
    assert "applied   20261122000100_ai_jobs_schema.sql" in first.stdout
    assert "up to date" not in first.stdout
    second = run(["migrate"], env)
    assert second.returncode == 0 and "applied   " not in second.stdout
    assert f"up to date: {len(migration_files())} migrations already applied" in second.stdout


def test_dev_brings_up_embedded_database_and_keeps_data(tmp_path: Path) -> None:
    user = uuid.uuid4()
    stack = start_dev(data_dir=tmp_path / "data")
    try:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            assert conn.execute("select count(*) from pg_publication_tables where tablename = 'ai_jobs'").fetchone()[0] == 1
            conn.execute("insert into auth.users (id) values (%s)", (user,))
            conn.execute("select public.ai_jobs_enqueue_v1(p_user_id => %s, p_job_type => 'example.countdown')", (user,))
    finally:
        stack.stop()
    # restart: the same folder, the job is still there
    stack = start_dev(data_dir=tmp_path / "data")
    try:
        with psycopg.connect(stack.database_url) as conn:
            assert conn.execute("select count(*) from public.ai_jobs where user_id = %s", (user,)).fetchone()[0] == 1
    finally:
        stack.stop()


def test_operator_commands(database_url: str, db) -> None:  # type: ignore[no-untyped-def]
    """enqueue --watch (with a worker running), list, cancel, stats and sweep, as an operator uses them."""
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres"}
    env.pop("SUPABASE_URL", None)
    worker = subprocess.Popen(AI_JOBS + ["worker", "--poll-interval", "0.1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        watched = run(["enqueue", "example.countdown", "--user", "ops@example.com",
                       "--input", '{"steps": 3, "step_seconds": 0.2}', "--watch"], env)
    finally:
        worker.terminate()
        worker.wait(timeout=10)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.startswith("enqueued ") and '"steps_completed": 3' in watched.stdout

    later = run(["enqueue", "example.countdown", "--user", "ops@example.com", "--input", '{"steps": 2}'], env)
    job_id = later.stdout.split()[1]
    listed = run(["list", "--status", "pending"], env)
    assert job_id in listed.stdout and "example.countdown" in listed.stdout
    cancelled = run(["cancel", job_id], env)
    assert cancelled.returncode == 0 and f"{job_id} cancelled" in cancelled.stdout
    stats = run(["stats"], env)
    assert stats.returncode == 0 and "example.countdown" in stats.stdout and "Last 24 h" in stats.stdout
    swept = run(["sweep", "--budget", "5"], env)
    assert swept.returncode == 0 and '"reaped"' in swept.stdout

    bad = run(["enqueue", "example.countdown", "--input", '{"steps": "many"}'], env)
    assert bad.returncode == 1 and "invalid input" in bad.stderr and "steps" in bad.stderr
    not_json = run(["enqueue", "example.countdown", "--input", "{nope"], env)
    assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr
