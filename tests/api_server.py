"""Start the real local API server (`ai-jobs serve`) as a subprocess on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import JWT_SECRET

REPO = Path(__file__).resolve().parents[1]
WORKER_SECRET = "test-worker-secret"
CRON_SECRET = "test-cron-secret"


@dataclass
class ApiServer:
    process: subprocess.Popen[str]
    url: str
    env: dict[str, str]

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(database_url: str, *, port: int = 0, sweep_interval: float = 0, **env_overrides: str) -> ApiServer:
    env = {k: v for k, v in os.environ.items() if k not in ("SUPABASE_URL", "AI_JOBS_WORKER_URL")}
    env.update(
        {
            "DATABASE_URL": database_url,
            "SUPABASE_JWT_SECRET": JWT_SECRET,
            "WORKER_SECRET": WORKER_SECRET,
            "CRON_SECRET": CRON_SECRET,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "AI_JOBS_DEMO_JOB_TYPES": "1",  # the tests create example.countdown jobs
        }
    )
    env.update(env_overrides)
    process = subprocess.Popen(
        [sys.executable, "-m", "ai_jobs.cli", "serve", "--no-public", "--port", str(port),
         "--sweep-interval", str(sweep_interval)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "serving on " in line:
            url = line.split("serving on ", 1)[1].strip()
            # keep draining output so the server never blocks on a full pipe
            import threading

            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]
            return ApiServer(process, url, env)
    process.kill()
    raise RuntimeError("server did not start:\n" + "".join(lines[-30:]))
