"""Start `ai-jobs dev` on a throwaway embedded database for a benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LocalStack:
    proc: subprocess.Popen[str]
    url: str
    token: str
    data_dir: Path
    database_url: str

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def start_dev(extra_env: dict[str, str] | None = None) -> LocalStack:
    data_dir = tempfile.mkdtemp(prefix="ai-jobs-bench-")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_URL")}
    env.update({"AI_JOBS_DATA_DIR": data_dir, "PYTHONUNBUFFERED": "1", **(extra_env or {})})
    proc = subprocess.Popen(
        [sys.executable, "-m", "ai_jobs.cli", "dev", "--port", "0", "--no-public", "--sweep-interval", "0"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = token = database_url = ""
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "serving on " in line:
            url = line.split("serving on ", 1)[1].strip()
        if "AI_JOBS_TOKEN=" in line:
            token = line.split("AI_JOBS_TOKEN=", 1)[1].strip()
        if "DATABASE_URL=" in line:
            database_url = line.split("DATABASE_URL=", 1)[1].strip()
        if "Press Ctrl-C" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return LocalStack(proc, url, token, Path(data_dir), database_url)
    proc.kill()
    raise RuntimeError("ai-jobs dev did not start")
