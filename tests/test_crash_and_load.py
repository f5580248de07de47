"""Crash and load tests at reduced size (full size: bench/crash_test.py and
bench/load_test.py)."""

from __future__ import annotations

from bench.crash_test import run_crash_test


def test_workers_killed_at_random_lose_and_repeat_nothing(database_url: str, db) -> None:  # type: ignore[no-untyped-def]
    report = run_crash_test(
        database_url, jobs=150, steps=3, step_seconds=0.02, workers=3, kill_every=0.6, max_kills=6, lease=1, timeout=180
    )
    assert report.ok, report.problems
    assert report.kills == 6  # the workers really were killed, repeatedly
    assert report.completed == 150 and report.checkpoint_writes == 450 and report.duplicate_checkpoints == 0


def test_batched_workers_killed_at_random_lose_and_repeat_nothing(database_url: str, db) -> None:  # type: ignore[no-untyped-def]
    """The fast path: batches of 10, each batch's completions written by the next claim;
    kills land between a finished batch and its write too."""
    report = run_crash_test(
        database_url, jobs=150, steps=3, step_seconds=0.02, workers=3, kill_every=0.6, max_kills=6, lease=1,
        timeout=180, batch=10,
    )
    assert report.ok, report.problems
    assert report.kills == 6
    assert report.completed == 150 and report.checkpoint_writes == 450 and report.duplicate_checkpoints == 0


def test_concurrent_creates_lose_nothing(database_url: str, make_user) -> None:  # type: ignore[no-untyped-def]
    from bench.load_test import run_load_test
    from tests.api_server import start_server
    from tests.conftest import user_token

    server = start_server(database_url, AI_JOBS_MAX_ACTIVE_PER_USER="8")
    try:
        users = [make_user() for _ in range(10)]
        report = run_load_test(server.url, database_url, {u: user_token(u) for u in users},
                               requests=240, concurrency=25, cap=8)
    finally:
        server.stop()
    assert report.ok, report.problems
    assert report.statuses.get(202, 0) == report.in_database == 80  # 10 users x cap 8
    assert report.statuses.get(429, 0) > 0
