"""Hand-off: ask for a worker invocation (POST /api/internal/work) without
waiting for the work itself.

The request runs on a background thread; the caller waits until its body is
fully written to the connection (httpcore's trace events), bounded by
`wait_seconds` (AI_JOBS_HANDOFF_WAIT_SECONDS, default 5 s). Returning earlier
would risk Vercel freezing the function before a cold TLS connection sends the
request. The worker invocation keeps running after we stop listening (Vercel
does not cancel it on disconnect). Anything a hand-off misses, the database
cron wake-up, the sweeper and every worker's own draining pick up.
"""

from __future__ import annotations

import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID

import httpx

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        worker_url: str | None,
        worker_secret: str | None,
        *,
        bypass_secret: str | None = None,
        wait_seconds: float = 5.0,
        connect_timeout: float = 5.0,
        response_timeout: float = 0.5,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        self.url = f"{worker_url.rstrip('/')}/api/internal/work" if worker_url else None
        self.secret = worker_secret
        self.wait_seconds = wait_seconds
        headers = {"content-type": "application/json"}
        if worker_secret:
            headers["authorization"] = f"Bearer {worker_secret}"
        if bypass_secret:
            headers["x-vercel-protection-bypass"] = bypass_secret
        # A read timeout right after sending: we only need the request delivered.
        self._client = httpx.Client(
            headers=headers, timeout=httpx.Timeout(response_timeout, connect=connect_timeout), verify=verify
        )
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ai-jobs-handoff")
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.unconfirmed = 0  # creates that returned before their request was written

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.secret)

    def dispatch(self, job_id: UUID | None = None, *, wait: bool = True) -> threading.Event | None:
        """Request a worker invocation (for `job_id` first, then whatever is due).
        Returns an event set once the request is on the wire (or has failed)."""
        if not self.enabled:
            log.debug("hand-off disabled (no worker URL or WORKER_SECRET)")
            return None
        delivered = threading.Event()
        self._pool.submit(self._send, job_id, delivered)
        if wait and self.wait_seconds > 0 and not delivered.wait(self.wait_seconds):
            with self._lock:
                self.unconfirmed += 1
            log.warning("hand-off not written within %.2f s; the database wake-up or sweep will start the job",
                        self.wait_seconds)
        return delivered

    def _send(self, job_id: UUID | None, delivered: threading.Event) -> bool:
        assert self.url is not None
        body = {"job_id": str(job_id)} if job_id else {}

        def trace(event: str, info: dict[str, object]) -> None:
            # httpcore reports progress; the request is delivered once its body is written
            if event.endswith("send_request_body.complete"):
                delivered.set()

        try:
            self._client.post(self.url, json=body, extensions={"trace": trace})
        except httpx.ReadTimeout:
            pass  # delivered; the worker is busy running the job, as intended
        except httpx.HTTPError as exc:
            with self._lock:
                self.failed += 1
            log.warning("hand-off to %s failed (%s); the sweeper will pick the job up", self.url, exc)
            return False
        finally:
            delivered.set()
        with self._lock:
            self.sent += 1
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
