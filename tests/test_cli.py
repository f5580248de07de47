"""The CLI as a new user runs it: real subprocesses, real databases."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

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
    second = run(["migrate"], env)
    assert second.returncode == 0 and "applied   " not in second.stdout
    assert "unchanged 20261122000200_ai_jobs_api.sql" in second.stdout


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
