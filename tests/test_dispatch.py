"""The hand-off never holds a create call beyond its bound, and returns as
soon as the request is written, not when the worker answers."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from ai_jobs.dispatch import Dispatcher


@pytest.fixture()
def slow_worker() -> Iterator[tuple[str, list[bytes]]]:
    """Accepts connections, reads the request, never answers (a busy worker invocation)."""
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            data = b""
            try:
                while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            received.append(data)
            threading.Timer(3, conn.close).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", received
    stop.set()
    listener.close()


def test_returns_once_the_request_is_written(slow_worker) -> None:
    url, received = slow_worker
    dispatcher = Dispatcher(url, "s3cret", wait_seconds=2.0, response_timeout=1.0)
    job_id = uuid.uuid4()
    started = time.perf_counter()
    delivered = dispatcher.dispatch(job_id)
    elapsed = time.perf_counter() - started
    assert delivered is not None and delivered.is_set()
    assert elapsed < 0.5  # not the 1 s read timeout, not the 2 s bound
    deadline = time.monotonic() + 2
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    request = received[0].decode()
    assert request.startswith("POST /api/internal/work ")
    assert "authorization: bearer s3cret" in request.lower()
    assert str(job_id) in request
    dispatcher.close()


def test_unreachable_target_never_exceeds_the_bound() -> None:
    dispatcher = Dispatcher("http://127.0.0.1:9", "s3cret", wait_seconds=0.05)
    started = time.perf_counter()
    dispatcher.dispatch(uuid.uuid4())
    assert time.perf_counter() - started < 0.2
    deadline = time.monotonic() + 5
    while dispatcher.failed == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dispatcher.failed == 1 and dispatcher.sent == 0
    dispatcher.close()


def test_disabled_without_url_or_secret() -> None:
    assert Dispatcher(None, "s").dispatch(uuid.uuid4()) is None
    assert Dispatcher("http://127.0.0.1:1", None).dispatch(uuid.uuid4()) is None
