"""Start `ai-jobs dev` on a throwaway embedded database for a benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_dev(extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, str]:
    data_dir = tempfile.mkdtemp(prefix="ai-jobs-bench-")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SUPABASE_URL")}
    env.update({"AI_JOBS_DATA_DIR": data_dir, "PYTHONUNBUFFERED": "1", **(extra_env or {})})
    proc = subprocess.Popen(
        [sys.executable, "-m", "ai_jobs.cli", "dev", "--port", "0", "--no-public", "--sweep-interval", "0"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = token = ""
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
        if "Press Ctrl-C" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc, url, token
    proc.kill()
    raise RuntimeError("ai-jobs dev did not start")
