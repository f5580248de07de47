"""The CLI as a new user runs it: real subprocesses, real databases."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from ai_jobs.database.migrations import migration_files
from bench._local_stack import start_dev
from tests.test_migrations import fresh_database  # noqa: F401 - fixture

AI_JOBS = [sys.executable, "-m", "ai_jobs.cli"]


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(AI_JOBS + args, env=env, capture_output=True, text=True, timeout=timeout)


def refusal(out: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """Exit code, the last line on stderr (the whole of it if it holds a traceback)
    and stdout: a usage error is (2, "ai-jobs <command>: error: argument ...", "")."""
    err = out.stderr.strip()
    return out.returncode, err if "Traceback" in err else (err.splitlines() or [""])[-1], out.stdout


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


def test_enqueue_refuses_out_of_range_flags_before_anything(database_url: str, db: psycopg.Connection) -> None:
    """A flag value the enqueue request (NewJob) would refuse is a usage error: one
    line naming the flag, exit 2 (argparse's), no traceback, nothing written."""
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres"}
    cases = [
        (["--priority", "5000"], "argument --priority: Input should be less than or equal to 1000, got '5000'"),
        (["--concurrency-key", "bad key!"], "argument --concurrency-key: String should be 1-200 letters, digits and "
                                            ". _ : / = @ + -, starting with a letter or digit, got 'bad key!'"),
        (["--org", "o" * 300], "argument --org: String should have at most 200 characters, got 300 characters"),
    ]
    outcomes = [refusal(run(["enqueue", "example.countdown", *flags], env)) for flags, _ in cases]
    assert outcomes == [(2, f"ai-jobs enqueue: error: {message}", "") for _, message in cases]
    # refused while parsing: not even the default user was created
    assert db.execute("select count(*) from auth.users").fetchone()[0] == 0
    assert db.execute("select count(*) from public.ai_jobs").fetchone()[0] == 0
    fine = run(["enqueue", "example.countdown", "--priority", "1000", "--org", "o" * 200,
                "--concurrency-key", "decision:123"], env)
    assert fine.returncode == 0, fine.stderr
    row = db.execute("select priority, org_id, concurrency_key from public.ai_jobs").fetchone()
    assert row == (1000, "o" * 200, "decision:123")


def test_enqueue_refuses_a_bad_input_or_job_before_writing_anything(database_url: str,
                                                                    db: psycopg.Connection) -> None:
    """--input that is not a JSON object is a usage error (usage, one line, exit 2);
    a job the queue refuses (unknown type, invalid input) is exit 1 with the problems.
    Either way nothing is written: the owner used to be created before the job was
    checked."""
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres"}
    cases = [
        ("nope", "not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        ("[1]", "must be a JSON object, got an array"),
        ("null", "must be a JSON object, got null"),
        ('{"steps": NaN}', "not valid JSON (NaN is not JSON)"),
    ]
    for value, message in cases:
        out = run(["enqueue", "example.countdown", "--user", "fresh@example.com", "--input", value], env)
        assert refusal(out) == (2, f"ai-jobs enqueue: error: argument --input: {message}", ""), value
        assert out.stderr.startswith("usage: ai-jobs enqueue "), out.stderr
    invalid = run(["enqueue", "example.countdown", "--user", "fresh@example.com", "--input", '{"steps": 0}'], env)
    assert (invalid.returncode, invalid.stdout) == (1, "")
    assert "invalid input for job type 'example.countdown'" in invalid.stderr and "steps" in invalid.stderr
    unknown = run(["enqueue", "no.such_type", "--user", "fresh@example.com"], env)
    assert (unknown.returncode, unknown.stdout) == (1, "") and "no.such_type" in unknown.stderr
    assert "Traceback" not in invalid.stderr + unknown.stderr
    assert db.execute("select count(*) from auth.users").fetchone()[0] == 0, "the owner was created"
    assert db.execute("select count(*) from public.ai_jobs").fetchone()[0] == 0
    fine = run(["enqueue", "example.countdown", "--user", "fresh@example.com", "--input", '{"steps": 1}'], env)
    assert fine.returncode == 0 and fine.stdout.startswith("enqueued "), fine.stderr
    owner = db.execute("select u.email from public.ai_jobs j join auth.users u on u.id = j.user_id").fetchone()
    assert owner == ("fresh@example.com",)


def test_a_validation_error_is_one_line_per_problem(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever pydantic refuses inside a command: a line per problem and exit 1
    (ValidationError.errors is a method, which used to end in a TypeError traceback)."""
    from ai_jobs import cli
    from ai_jobs.models import NewJob

    def refuse(args: object, settings: object) -> int:
        NewJob(user_id=uuid.uuid4(), job_type="example.countdown", priority=5000, org_id="")
        return 0

    monkeypatch.setattr(cli, "cmd_stats", refuse)
    assert cli.main(["stats"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "ai-jobs: NewJob priority: Input should be less than or equal to 1000",
        "ai-jobs: NewJob org_id: String should have at least 1 character",
    ]


def test_worker_refuses_out_of_range_flags_at_start(database_url: str, db: psycopg.Connection) -> None:
    """Each numeric flag is checked at start, as AI_JOBS_LEASE_SECONDS is: a value the
    claim would refuse used to start a worker that logged the refusal every poll.
    (--once: a worker that does start exits when idle, so the test cannot hang.)"""
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "AI_JOBS_POOL_MAX_SIZE": "4"}
    cases = [
        (["--lease-seconds", "5000"], "argument --lease-seconds: Input should be less than or equal to 3600, got '5000'"),
        (["--lease-seconds", "0"], "argument --lease-seconds: Input should be greater than or equal to 1, got '0'"),
        (["--poll-interval", "0"], "argument --poll-interval: Input should be greater than 0, got '0'"),
        (["--poll-interval", "nan"], "argument --poll-interval: Input should be a finite number, got 'nan'"),
        (["--poll-interval", "4000"], "argument --poll-interval: Input should be less than or equal to 3600, got '4000'"),
        (["--batch", "0"], "argument --batch: Input should be greater than or equal to 1, got '0'"),
        (["--batch", "1001"], "argument --batch: Input should be less than or equal to 1000, got '1001'"),
    ]
    outcomes = [refusal(run(["worker", "--once", *flags], env)) for flags, _ in cases]
    assert outcomes == [(2, f"ai-jobs worker: error: {message}", "") for _, message in cases]
    # --concurrency too, the bound AI_JOBS_POOL_MAX_SIZE sets included: usage, then the line
    for concurrency, message in (("0", "Input should be greater than or equal to 1, got '0'"),
                                 ("101", "Input should be less than or equal to 100, got '101'"),
                                 ("5", "Input should be at most AI_JOBS_POOL_MAX_SIZE (4), got '5'")):
        out = run(["worker", "--once", "--concurrency", concurrency], env)
        assert refusal(out) == (2, f"ai-jobs worker: error: argument --concurrency: {message}", "")
        assert out.stderr.startswith("usage: ai-jobs worker "), out.stderr
    edges = run(["worker", "--once", "--lease-seconds", "3600", "--poll-interval", "3600", "--batch", "1000",
                 "--concurrency", "4"], env)
    assert edges.returncode == 0 and edges.stdout.startswith("worker "), edges.stderr


def test_other_commands_refuse_out_of_range_flags_when_parsed(database_url: str, db: psycopg.Connection,
                                                              tmp_path: Path) -> None:
    """Values that used to fail only later (list --limit: the database's refusal, not
    naming the flag; watch/cancel: a bare 'badly formed hexadecimal UUID string'), or
    to do something else than asked (token --ttl 0: an expired token; sweep --budget
    -1: run nothing; --sweep-interval -1: no sweeps, inf: a sweeper thread's
    OverflowError) are usage errors naming the flag, exit 2. (A short timeout: before,
    serve started and kept serving.)"""
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "AI_JOBS_DATA_DIR": str(tmp_path)}
    cases = [
        (["list", "--limit", "0"], "argument --limit: Input should be greater than or equal to 1, got '0'"),
        (["list", "--limit", "201"], "argument --limit: Input should be less than or equal to 200, got '201'"),
        (["token", "--user", "ops@example.com", "--ttl", "0"],
         "argument --ttl: Input should be greater than or equal to 1, got '0'"),
        (["sweep", "--budget", "-1"], "argument --budget: Input should be greater than or equal to 0, got '-1'"),
        (["serve", "--port", "0", "--sweep-interval", "-1"],
         "argument --sweep-interval: Input should be greater than or equal to 0, got '-1'"),
        (["serve", "--port", "0", "--sweep-interval", "inf"],
         "argument --sweep-interval: Input should be a finite number, got 'inf'"),
        (["watch", "nope"], "argument job_id: not a job id (a UUID), got 'nope'"),
        (["cancel", "12"], "argument job_id: not a job id (a UUID), got '12'"),
    ]

    def attempt(args: list[str]) -> tuple[int | None, str, str]:
        try:
            return refusal(run(args, env, timeout=20))
        except subprocess.TimeoutExpired:
            return None, "still running after 20 s", ""

    outcomes = [attempt(args) for args, _ in cases]
    assert outcomes == [(2, f"ai-jobs {args[0]}: error: {message}", "") for args, message in cases]
    assert db.execute("select count(*) from auth.users").fetchone()[0] == 0, "token created no user"
    assert run(["list", "--limit", "200"], env).returncode == 0


def test_serve_on_an_address_it_cannot_listen_on(database_url: str, tmp_path: Path) -> None:
    """A --host that is no address of this machine: one line, exit 1, no traceback
    (it used to be an OSError traceback from the bind)."""
    env = {**os.environ, "DATABASE_URL": database_url, "AI_JOBS_STORE": "postgres", "AI_JOBS_DATA_DIR": str(tmp_path)}
    out = run(["serve", "--host", "203.0.113.7", "--port", "0"], env, timeout=30)  # TEST-NET-3: never ours
    code, line, stdout = refusal(out)
    assert (code, stdout) == (1, ""), out.stderr
    assert line.startswith("ai-jobs: cannot listen on 203.0.113.7:0: ") and line.endswith("(check --host and --port)")
    assert out.stderr.strip() == line and not (tmp_path / "server.json").exists()
