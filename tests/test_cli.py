"""The CLI as a new user runs it: real subprocesses, real databases."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

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


def _start_dev(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(AI_JOBS + ["dev", "--port", "0", "--sweep-interval", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    url = ""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "DATABASE_URL=" in line:
            url = line.split("DATABASE_URL=", 1)[1].strip()
        if "Press Ctrl-C" in line:
            return proc, url
    proc.kill()
    pytest.fail(f"ai-jobs dev did not come up; last output: {line!r}")


def test_dev_brings_up_embedded_database_and_keeps_data(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_URL")}
    env["AI_JOBS_DATA_DIR"] = str(tmp_path / "data")
    user = uuid.uuid4()
    proc, url = _start_dev(env)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("select count(*) from pg_publication_tables where tablename = 'ai_jobs'").fetchone()[0] == 1
            conn.execute("insert into auth.users (id) values (%s)", (user,))
            conn.execute("select public.ai_jobs_enqueue_v1(p_user_id => %s, p_job_type => 'example.countdown')", (user,))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # restart: the same folder, the job is still there
    proc, url = _start_dev(env)
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("select count(*) from public.ai_jobs where user_id = %s", (user,)).fetchone()[0] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
