"""Hand-off delivery through a slow TLS connection: create latency p50/p95 and
the share of hand-offs that reach the worker endpoint when every function
instance is frozen (SIGSTOP) the moment its create returns.

A TLS proxy adds 150 ms to each new connection (tests/latency_proxy.py); each
create runs in a fresh forked instance, so every hand-off pays it. Compares the
default bound (AI_JOBS_HANDOFF_WAIT_SECONDS = 5 s) with the old 50 ms.
Run: .venv/bin/python bench/handoff_tls.py [creates]"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.latency_proxy import HandoffTarget, creates_with_frozen_functions  # noqa: E402


def main() -> None:
    import logging

    logging.disable(logging.WARNING)  # one warning per lost hand-off otherwise
    creates = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    from bench._throwaway_db import throwaway_database

    with throwaway_database("tls") as database, tempfile.TemporaryDirectory(prefix="ai-jobs-bench-") as folder:
        url = database.url
        user = database.add_user()
        target = HandoffTarget(Path(folder), connect_delay=0.15)
        print("| hand-off bound | creates | create p50 ms | create p95 ms | delivered |")
        print("|---|---|---|---|---|")
        try:
            for label, wait in (("5 s (default)", 5.0), ("50 ms (before)", 0.05)):
                run = creates_with_frozen_functions(url, user, target, creates=creates, wait_seconds=wait,
                                                    settle_seconds=10 if wait > 1 else 3)
                print(f"| {label} | {creates} | {run.percentile(0.5) * 1000:.0f} | {run.percentile(0.95) * 1000:.0f} "
                      f"| {run.delivered}/{creates} ({100 * run.delivered / creates:.0f} %) |", flush=True)
        finally:
            target.close()


if __name__ == "__main__":
    main()
