"""Cold import time of the request path vs the worker path, each in a fresh
interpreter (median of N runs, interpreter start-up subtracted), plus proof
of what each path loads. Run: .venv/bin/python bench/import_time.py [N]"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PATHS = {
    "baseline (python -c pass)": "pass",
    "request path: functions.app (all handlers)": "import functions.app",
    "worker path: + Claude call module + anthropic": "import functions.app, ai_jobs.claude.calls, anthropic",
    "anthropic alone": "import anthropic",
    "supabase alone": "import supabase",
}


def wall_ms(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return (time.perf_counter() - started) * 1000


def loads(code: str, module: str) -> bool:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True, text=True)
    return any(line.split("|")[-1].strip() == module for line in out.stderr.splitlines())


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    medians = {label: statistics.median(wall_ms(code) for _ in range(runs)) for label, code in PATHS.items()}
    base = medians.pop("baseline (python -c pass)")
    print(f"| path | import ms (median of {runs}, start-up {base:.0f} ms subtracted) | loads anthropic | loads supabase |")
    print("|---|---|---|---|")
    for label, ms in medians.items():
        code = PATHS[label]
        print(f"| {label} | {ms - base:.0f} | {'yes' if loads(code, 'anthropic') else 'no'} | {'yes' if loads(code, 'supabase') else 'no'} |")


if __name__ == "__main__":
    main()
