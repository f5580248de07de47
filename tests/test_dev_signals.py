"""`make dev` / `ai-jobs dev` / `ai-jobs worker` stop cleanly on signals sent to the
whole process group (as timeout, systemd, foreman and IDEs do: make forwards the
signal, so ai-jobs gets it twice), a taken port names the command to use instead,
and piped output carries no colour codes (issue 17). Real processes, real databases."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ai_jobs.models import JobStatus
from ai_jobs.registry import load_job_modules
from ai_jobs.store.postgres import PostgresStore
from tests.conftest import unused_port

REPO = Path(__file__).resolve().parents[1]
ROUNDS = int(os.environ.get("AI_JOBS_SIGNAL_ROUNDS", "20"))


def _env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (
        "DATABASE_URL", "SUPABASE_URL", "AI_JOBS_WORKER_URL", "AI_JOBS_STORE", "AI_JOBS_PORT", "NO_COLOR",
        "MAKEFLAGS", "MAKELEVEL", "MFLAGS",
    )}
    env.update({"AI_JOBS_DATA_DIR": str(data), "ANTHROPIC_API_KEY": "", "PYTHONUNBUFFERED": "1", **extra})
    return env


def _postgres_pids(pgdata: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        try:
            if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or []):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def _wait_until(condition, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


class Group:
    """A command in its own process group, its output collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        if not _wait_until(lambda: text in self.output or self.proc.poll() is not None, timeout) or \
                text not in self.output:
            raise AssertionError(f"no {text!r} in output:\n{self.output}")

    def signal_group(self, signum: int) -> None:
        os.killpg(self.proc.pid, signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    yield data
    for pid in _postgres_pids((data / "pgdata").resolve()):  # never leave a server behind, even on failure
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _make_dev(data: Path, port: int, **extra: str) -> Group:
    return Group(["make", "-s", "dev", f"PORT={port}"], _env(data, **extra))


def _stop_round(data: Path, signum: int) -> float:
    """Start `make dev`, signal its group twice in quick succession, return how long it took to stop."""
    pgdata = (data / "pgdata").resolve()
    group = _make_dev(data, unused_port())
    try:
        group.wait_for("serving on")
        started = time.monotonic()
        group.signal_group(signum)
        time.sleep(0.01)
        try:
            group.signal_group(signum)
        except ProcessLookupError:
            pass
        try:
            group.proc.wait(5)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"make dev still running 5 s after two signals {signum}:\n{group.output}") from None
        elapsed = time.monotonic() - started
        assert _wait_until(lambda: not _postgres_pids(pgdata), 5 - min(elapsed, 4)), _postgres_pids(pgdata)
        assert not (pgdata / "postmaster.pid").exists()
        assert "Traceback" not in group.output, group.output
        return elapsed
    finally:
        group.kill()


def test_make_dev_stops_on_sigterm_to_the_group_every_time(data_dir: Path) -> None:
    times = [_stop_round(data_dir, signal.SIGTERM) for _ in range(ROUNDS)]
    assert max(times) < 5, times


def test_make_dev_stops_on_ctrl_c_to_the_group(data_dir: Path) -> None:
    times = [_stop_round(data_dir, signal.SIGINT) for _ in range(3)]
    assert max(times) < 5, times


def test_taken_port_names_the_command_to_run(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(["make", "-s", "dev", f"PORT={port}"], env=_env(data_dir), cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        direct = subprocess.run([sys.executable, "-m", "ai_jobs.cli", "dev"], cwd=REPO,
                                env=_env(data_dir, AI_JOBS_PORT=str(port)), capture_output=True, text=True,
                                timeout=60)
    assert out.returncode != 0
    assert f"port {port} is in use: run make dev PORT=" in out.stderr, out.stderr
    assert "--port 0 for any free port" in out.stderr
    assert "Traceback" not in out.stderr and "Either identify" not in out.stderr
    # AI_JOBS_PORT is the default for --port; outside make the advice is the ai-jobs command
    assert direct.returncode == 1
    assert f"port {port} is in use: run ai-jobs dev --port " in direct.stderr, direct.stderr
    assert "Traceback" not in direct.stderr
    assert not _wait_until(lambda: bool(_postgres_pids((data_dir / "pgdata").resolve())), 0)


def test_piped_dev_prints_no_colour_and_no_token_in_request_log(data_dir: Path) -> None:
    import urllib.request

    group = Group([sys.executable, "-m", "ai_jobs.cli", "dev", "--port", "0"], _env(data_dir))
    try:
        group.wait_for("serving on")
        url = next(line.split("serving on ", 1)[1].strip() for line in group.lines if "serving on " in line)
        for path in ("/api/health", "/api/nothing-here?access_token=SEKRET-1&status=x"):
            try:
                urllib.request.urlopen(url + path, timeout=5).read()
            except OSError:
                pass  # the 404 is what we want logged
        assert _wait_until(lambda: "nothing-here" in group.output, 5), group.output
        group.signal_group(signal.SIGTERM)
        group.proc.wait(5)
    finally:
        group.kill()
    out = group.output
    assert "\x1b[" not in out, out
    assert "SEKRET-1" not in out and "access_token=***" in out and "status=x" in out
    request_lines = [line for line in out.splitlines() if "GET /api/" in line]
    assert len(request_lines) == 2, request_lines  # one line per request


def test_worker_stops_on_two_sigterms_and_releases_its_job(pg_store: PostgresStore, make_user,
                                                           database_url: str) -> None:
    registry = load_job_modules()
    job_id = pg_store.enqueue(registry.new_job(make_user(), "example.countdown",
                                               {"steps": 40, "step_seconds": 0.3})).job.id
    env = {k: v for k, v in os.environ.items() if k not in ("SUPABASE_URL", "AI_JOBS_STORE")}
    env.update({"DATABASE_URL": database_url, "AI_JOBS_DEMO_JOB_TYPES": "1"})
    worker = Group([sys.executable, "-m", "ai_jobs.cli", "worker", "--lease-seconds", "30", "--poll-interval", "0.2"],
                   env)
    try:
        assert _wait_until(lambda: len(pg_store.get(job_id).checkpoints) >= 2, 30), worker.output
        started = time.monotonic()
        worker.signal_group(signal.SIGTERM)
        time.sleep(0.01)
        worker.signal_group(signal.SIGTERM)
        worker.proc.wait(5)
        assert time.monotonic() - started < 5
    finally:
        worker.kill()
    assert worker.proc.returncode == 0, worker.output
    job = pg_store.get(job_id)
    assert job.status is JobStatus.PENDING and job.attempts == 0 and job.locked_by is None
    assert 2 <= len(job.checkpoints) < 40


@pytest.mark.parametrize("to", ["process", "group"])
def test_dev_stops_the_database_it_is_still_starting(tmp_path: Path, to: str) -> None:
    """SIGTERM while the embedded PostgreSQL starts or migrates (before the server is
    up): `ai-jobs dev` exits within 5 s and stops the PostgreSQL it started."""
    data = tmp_path / "data"
    pgdata = (data / "pgdata").resolve()
    group = Group([sys.executable, "-m", "ai_jobs.cli", "dev", "--port", "0"], _env(data))
    try:
        assert _wait_until(lambda: bool(_postgres_pids(pgdata)) or group.proc.poll() is not None, 60), group.output
        assert "serving on" not in group.output, "too late: the server was already up"
        started = time.monotonic()
        if to == "group":
            group.signal_group(signal.SIGTERM)
        else:
            group.proc.send_signal(signal.SIGTERM)
        try:
            group.proc.wait(5)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ai-jobs dev still running 5 s after SIGTERM during start-up:\n{group.output}") from None
        assert _wait_until(lambda: not _postgres_pids(pgdata), 5 - min(time.monotonic() - started, 4)), \
            f"postgres left running: {_postgres_pids(pgdata)}\n{group.output}"
        assert "serving on" not in group.output
        assert "Traceback" not in group.output, group.output
    finally:
        group.kill()
        for pid in _postgres_pids(pgdata):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
