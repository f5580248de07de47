"""Hand-off delivered: a create returns only after its work request is fully
written, so a function frozen right after its response still hands the job
off, even over a cold TLS connection that takes 150 ms longer to open.

Every create runs in a fresh forked instance that freezes itself (SIGSTOP) the
moment the create returns (tests/latency_proxy.py). With the default bound every request
reaches the worker endpoint; the old 50 ms bound, as a control, loses them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_jobs.settings import Settings
from tests.latency_proxy import HandoffTarget, creates_with_frozen_functions


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandoffTarget]:
    handoff = HandoffTarget(Path(tmp_path_factory.mktemp("tls")), connect_delay=0.15)
    yield handoff
    handoff.close()


def test_every_create_is_handed_off_through_a_slow_tls_connection(database_url, make_user, target) -> None:
    run = creates_with_frozen_functions(
        database_url, make_user(), target, creates=200, wait_seconds=Settings().handoff_wait_seconds
    )
    assert run.delivered == 200, f"{200 - run.delivered} of 200 hand-offs lost"
    assert run.unconfirmed == 0
    assert target.worker.partial == 0
    # each create paid for the slow connection: it waited for the write
    assert run.percentile(0.5) >= 0.15
    print(f"\nhand-off via +150 ms TLS: create p50 {run.percentile(0.5) * 1000:.0f} ms, "
          f"p95 {run.percentile(0.95) * 1000:.0f} ms, delivered {run.delivered}/200")


def test_control_a_50ms_bound_loses_hand_offs(database_url, make_user, target) -> None:
    """Proves the proxy is slow enough to matter: returning after 50 ms, as the
    old default did, lets the freeze cut the request off."""
    run = creates_with_frozen_functions(database_url, make_user(), target, creates=20, wait_seconds=0.05, settle_seconds=3)
    assert run.delivered < 20
    assert run.unconfirmed > 0
