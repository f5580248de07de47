"""The CLI beside a running `ai-jobs dev`: hand-off from `enqueue`, plain
progress when piped, job modules from the working directory, `list --user`
by email, and the embedded PostgreSQL's lifetime. Real subprocesses, real
databases."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from bench._local_stack import start_dev
from tests.conftest import make_token
from tests.postgrest_emulator import PostgrestEmulator

AI_JOBS = [sys.executable, "-m", "ai_jobs.cli"]
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "ai-jobs")
WAITS = "the job waits for a worker (`ai-jobs worker`) or the next sweep"


def cli_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that would pick a database or a worker for us."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "DATABASE_URL", "SUPABASE_URL", "AI_JOBS_WORKER_URL", "WORKER_SECRET", "AI_JOBS_JOB_MODULES", "AI_JOBS_STORE",
    )}
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str], *, timeout: float = 60,
        cwd: Path | None = None, command: list[str] = AI_JOBS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def postgres_pids(pgdata: Path) -> list[int]:
    """Postgres processes serving this data folder (any user's)."""
    found = []
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_enqueue_hands_off_to_dev_and_dev_leaves_no_postgres(tmp_path: Path) -> None:
    """Sweeps are off (start_dev's default), so only a hand-off can start the job."""
    data = tmp_path / "data"
    pgdata = (data / "pgdata").resolve()
    stack = start_dev({"ANTHROPIC_API_KEY": ""}, data_dir=data)
    try:
        assert any("ANTHROPIC_API_KEY is not set" in line and "ai.*" in line for line in stack.banner), stack.banner
        record = json.loads((data / "server.json").read_text())
        assert record["url"] == stack.url and record["pid"] == stack.proc.pid
        started = time.monotonic()
        out = run(["enqueue", "example.countdown", "--input", '{"steps": 3, "step_seconds": 1}', "--watch"],
                  cli_env(AI_JOBS_DATA_DIR=str(data)))
        elapsed = time.monotonic() - started
    finally:
        stack.stop()
    assert out.returncode == 0, out.stderr
    assert f"handed off to {stack.url}/api/internal/work" in out.stderr
    assert elapsed < 12, elapsed  # 3 s of steps; the next sweep would be 15 s away, and sweeps are off here
    lines = out.stdout.splitlines()
    assert lines[0].startswith("enqueued ")
    progress = [line for line in lines if re.fullmatch(r" *\d+% \w+.*", line)]
    assert any(re.fullmatch(r" *\d+% running Step [123] of 3", line) for line in progress), out.stdout
    assert progress[-1].startswith("100% completed")
    assert all(a != b for a, b in zip(progress, progress[1:])), "one line per change"
    assert "━" not in out.stdout and "\x1b[" not in out.stdout  # no progress bar, no colours
    assert '"steps_completed": 3' in out.stdout
    # stopped normally: its record is gone and no postgres is left for this folder
    assert not (data / "server.json").exists()
    assert wait_until(lambda: not postgres_pids(pgdata), timeout=5), postgres_pids(pgdata)
    assert not (pgdata / "postmaster.pid").exists()


def test_embedded_postgres_stops_with_dev_after_a_killed_watch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pgdata = (data / "pgdata").resolve()
    stack = start_dev({"ANTHROPIC_API_KEY": "sk-ant-test-not-a-key"}, data_dir=data)
    watch: subprocess.Popen[str] | None = None
    try:
        assert not any("ANTHROPIC_API_KEY" in line for line in stack.banner)
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        user = uuid.uuid4()
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute("insert into auth.users (id) values (%s)", (user,))
            job = conn.execute("select public.ai_jobs_enqueue_v1(p_user_id => %s, p_job_type => 'example.countdown')"
                               " -> 'job' ->> 'id'", (user,)).fetchone()[0]
        watch = subprocess.Popen(AI_JOBS + ["watch", job], env=cli_env(AI_JOBS_DATA_DIR=str(data)),
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert watch.stdout is not None
        assert watch.stdout.readline().strip() == "0% pending"  # attached to the server and following the job
        handles = json.loads((pgdata / ".handle_pids.json").read_text())
        assert watch.pid in handles and stack.proc.pid in handles
        watch.kill()
        watch.wait(10)
        stack.proc.send_signal(signal.SIGINT)
        stack.proc.wait(30)
        assert wait_until(lambda: not psutil.pid_exists(postmaster), timeout=5), "postgres outlived ai-jobs dev"
        assert not postgres_pids(pgdata) and not (pgdata / "postmaster.pid").exists()
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()
        if stack.proc.poll() is None:
            stack.stop()
        for pid in postgres_pids(pgdata):  # never leave a server behind, even when the test fails
            os.kill(pid, signal.SIGTERM)


class _WorkEndpoint(BaseHTTPRequestHandler):
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.received.append({"path": self.path, "authorization": self.headers.get("authorization"),
                              "body": json.loads(body or b"{}")})
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def work_endpoint() -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A real HTTP server in place of a deployment's /api/internal/work, recording what arrives."""
    received: list[dict[str, object]] = []
    handler = type("Handler", (_WorkEndpoint,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()


def test_enqueue_hand_off_target(database_url: str, db: psycopg.Connection, tmp_path: Path,
                                 work_endpoint: tuple[str, list[dict[str, object]]]) -> None:
    env = cli_env(DATABASE_URL=database_url, AI_JOBS_DATA_DIR=str(tmp_path))
    alone = run(["enqueue", "example.countdown"], env)
    assert alone.returncode == 0, alone.stderr
    assert alone.stderr.strip() == f"no worker to hand off to: {WAITS}"

    record = tmp_path / "server.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": dead.pid, "database": database_url}))
    stale = run(["enqueue", "example.countdown"], env)
    assert stale.stderr.strip() == f"no worker to hand off to: {WAITS}", "a dead server's record is ignored"
    record.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": os.getpid(), "database": "postgresql:///other"}))
    other = run(["enqueue", "example.countdown"], env)
    assert other.stderr.strip() == f"no worker to hand off to: {WAITS}", "a server of another database is no help"

    url, received = work_endpoint
    sent = run(["enqueue", "example.countdown"], {**env, "AI_JOBS_WORKER_URL": url, "WORKER_SECRET": "s3cret"})
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.strip() == f"handed off to {url}/api/internal/work"
    job_id = sent.stdout.split()[1]
    assert received == [{"path": "/api/internal/work", "authorization": "Bearer s3cret", "body": {"job_id": job_id}}]

    refused = run(["enqueue", "example.countdown"],
                  {**env, "AI_JOBS_WORKER_URL": "http://127.0.0.1:9", "WORKER_SECRET": "s3cret"})
    assert refused.returncode == 0
    assert refused.stderr.strip() == f"hand-off to http://127.0.0.1:9/api/internal/work failed: {WAITS}"

    # piped watch of a job that ends badly: plain lines, exit code 1 as before
    assert run(["cancel", job_id], env).returncode == 0
    watched = run(["watch", job_id], env)
    assert watched.returncode == 1
    assert watched.stdout.splitlines()[0] == "  0% cancelled" and "\x1b[" not in watched.stdout


JOB_MODULE = '''
from pydantic import BaseModel
from ai_jobs.registry import job


class ShoutIn(BaseModel):
    text: str


class ShoutOut(BaseModel):
    text: str


@job("custom.shout", input=ShoutIn, output=ShoutOut)
def shout(data, ctx):
    return ShoutOut(text=data.text.upper())
'''


def test_console_script_imports_job_modules_from_the_working_directory(
    database_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """The installed `ai-jobs` script (not `python -m`, which adds the working directory by itself)."""
    (tmp_path / "shout_jobs.py").write_text(JOB_MODULE)
    env = cli_env(DATABASE_URL=database_url, AI_JOBS_DATA_DIR=str(tmp_path / "data"), AI_JOBS_JOB_MODULES="shout_jobs")
    env.pop("PYTHONPATH", None)
    enqueued = run(["enqueue", "custom.shout", "--input", '{"text": "hi"}'], env,
                   cwd=tmp_path, command=[CONSOLE_SCRIPT])
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.split()[1]
    worked = run(["worker", "--once"], env, cwd=tmp_path, command=[CONSOLE_SCRIPT])
    assert worked.returncode == 0, worked.stderr
    assert "custom.shout" in worked.stdout
    status, result = db.execute("select status, result from public.ai_jobs where id = %s", (job_id,)).fetchone()
    assert (status, result) == ("completed", {"text": "HI"})


def test_list_user_takes_an_email_or_an_id(database_url: str, db: psycopg.Connection, tmp_path: Path) -> None:
    env = cli_env(DATABASE_URL=database_url, AI_JOBS_DATA_DIR=str(tmp_path))
    alice = run(["enqueue", "example.countdown", "--user", "alice@example.com"], env).stdout.split()[1]
    bob = run(["enqueue", "example.countdown", "--user", "bob@example.com"], env).stdout.split()[1]
    by_email = run(["list", "--user", "alice@example.com"], env)
    assert by_email.returncode == 0, by_email.stderr
    assert alice in by_email.stdout and bob not in by_email.stdout
    alice_id = db.execute("select id from auth.users where email = 'alice@example.com'").fetchone()[0]
    by_id = run(["list", "--user", str(alice_id)], env)
    assert alice in by_id.stdout and bob not in by_id.stdout

    unknown = run(["list", "--user", "nobody@example.com"], env)
    assert unknown.returncode == 1
    assert "nobody@example.com" in unknown.stderr and "no user has this email" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert db.execute("select count(*) from auth.users where email = 'nobody@example.com'").fetchone()[0] == 0


@pytest.fixture()
def rest_edge(postgrest: PostgrestEmulator) -> Iterator[str]:
    """Supabase's REST edge over real HTTP (the PostgREST emulator behind a local
    server), so a CLI subprocess can use the Supabase REST store."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            answer = postgrest(httpx.Request("POST", f"http://rest{self.path}", headers=dict(self.headers), content=body))
            self.send_response(answer.status_code)
            self.send_header("content-type", answer.headers.get("content-type", "application/json"))
            self.send_header("content-length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_enqueue_on_the_supabase_rest_store_takes_a_user_id(db: psycopg.Connection, rest_edge: str,
                                                            tmp_path: Path) -> None:
    """No DATABASE_URL: auth.users is out of reach, so an email (the default
    dev@localhost included) is refused as `list --user` refuses it, before anything
    is sent; a user id enqueues through REST."""
    env = cli_env(SUPABASE_URL=rest_edge, SUPABASE_SERVICE_ROLE_KEY=make_token("service_role"),
                  AI_JOBS_DATA_DIR=str(tmp_path))
    for who in (None, "ops@example.com"):
        out = run(["enqueue", "example.countdown", *(["--user", who] if who else [])], env)
        assert out.returncode == 1, out.stderr
        assert out.stderr.strip() == (f"ai-jobs: --user '{who or 'dev@localhost'}': finding or creating users by email "
                                      "needs DATABASE_URL or the embedded database; pass the user id instead")
        assert out.stdout == ""
    listed = run(["list", "--user", "ops@example.com"], env)
    assert listed.returncode == 1 and "looking users up by email needs DATABASE_URL" in listed.stderr
    assert db.execute("select count(*) from public.ai_jobs").fetchone()[0] == 0
    assert not (tmp_path / "pgdata").exists(), "no embedded database was started"

    owner = uuid.uuid4()
    db.execute("insert into auth.users (id, email) values (%s, 'ops@example.com')", (owner,))
    enqueued = run(["enqueue", "example.countdown", "--user", str(owner)], env)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.split()[1]
    assert db.execute("select user_id from public.ai_jobs where id = %s", (job_id,)).fetchone()[0] == owner
    listed = run(["list", "--user", str(owner)], env)
    assert listed.returncode == 0 and job_id in listed.stdout


def test_list_status_takes_every_job_status(database_url: str, db: psycopg.Connection, tmp_path: Path) -> None:
    """paused included (it used to be an invalid choice): the choices are JobStatus's."""
    from ai_jobs.cli import build_parser
    from ai_jobs.models import JobStatus
    from ai_jobs.store.postgres import PostgresStore

    for status in JobStatus:
        assert build_parser().parse_args(["list", "--status", status.value]).status == status.value
    env = cli_env(DATABASE_URL=database_url, AI_JOBS_DATA_DIR=str(tmp_path))
    paused, pending = (run(["enqueue", "example.countdown"], env).stdout.split()[1] for _ in range(2))
    with PostgresStore(database_url) as store:
        assert store.pause(uuid.UUID(paused)).status == JobStatus.PAUSED
    listed = run(["list", "--status", "paused"], env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [paused, "example.countdown", "paused", "0%", "0/3", listed.stdout.split()[-1]]
    assert pending not in listed.stdout
