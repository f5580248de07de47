"""Start `ai-jobs dev` as a subprocess and read what its banner reports.
Used by the benchmarks and by the tests that need the whole local stack."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Benchmarks (and the tests that share this module) run example.countdown and
# bench.noop, in this process and in the workers they start.
os.environ.setdefault("AI_JOBS_DEMO_JOB_TYPES", "1")


@dataclass
class LocalStack:
    proc: subprocess.Popen[str]
    url: str
    token: str
    data_dir: Path
    database_url: str
    demo_url: str
    banner: list[str] = field(default_factory=list)  # what it printed up to "Press Ctrl-C"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def start_dev(
    extra_env: dict[str, str] | None = None,
    *,
    data_dir: Path | None = None,
    public: bool = False,
    sweep_interval: float = 0,
) -> LocalStack:
    """`ai-jobs dev --port 0` on `data_dir` (a fresh temporary folder by default)."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="ai-jobs-dev-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_URL")}
    env.update({"AI_JOBS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **(extra_env or {})})
    args = ["dev", "--port", "0", "--sweep-interval", str(sweep_interval), *([] if public else ["--no-public"])]
    proc = subprocess.Popen([sys.executable, "-m", "ai_jobs.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: dict[str, str] = {}
    markers = {"url": "serving on ", "token": "AI_JOBS_TOKEN=", "database_url": "DATABASE_URL=", "demo_url": "demo "}
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    line = ""
    banner: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        banner.append(line.rstrip("\n"))
        for key, marker in markers.items():
            if marker in line and key not in found:
                found[key] = line.split(marker, 1)[1].strip()
        if "Press Ctrl-C" in line:
            # keep reading so the server never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return LocalStack(proc, found["url"], found["token"], data_dir, found["database_url"],
                              found.get("demo_url", ""), banner)
    proc.kill()
    raise RuntimeError(f"ai-jobs dev did not start; last output: {line!r}")
