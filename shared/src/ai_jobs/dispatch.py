"""Hand-off: ask for a worker invocation (POST /api/internal/work) without
waiting for the work itself.

The request runs on a background thread; the caller waits until its body is
fully written to the connection, bounded by `wait_seconds`
(AI_JOBS_HANDOFF_WAIT_SECONDS, default 5 s). Returning earlier would risk
Vercel freezing the function before a cold TLS connection sends the request.
The worker invocation keeps running after we stop listening (Vercel does not
cancel it on disconnect). Anything a hand-off misses, the database cron
wake-up, the sweeper and every worker's own draining pick up.

One short POST on a fresh connection needs no HTTP client library: the
standard library's http.client sends it, so a cold create does not import
httpx (and the rich, pygments and HTTP/2 modules it pulls in). No proxy
variables are read: the worker URL is the deployment's own.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit
from uuid import UUID

log = logging.getLogger(__name__)


def _tls_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    """What `verify` asks for: a given context, a CA bundle path, no checks (False),
    or (True) certifi's bundle when installed, else the system's."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    try:
        import certifi
    except ImportError:  # the system's store
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


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
        self._headers = {"Content-Type": "application/json", "User-Agent": "ai-jobs-dispatch"}
        if worker_secret:
            self._headers["Authorization"] = f"Bearer {worker_secret}"
        if bypass_secret:
            self._headers["x-vercel-protection-bypass"] = bypass_secret
        self._connect_timeout = connect_timeout
        # A read timeout right after sending: we only need the request delivered.
        self._response_timeout = response_timeout
        self._verify = verify
        self._tls: ssl.SSLContext | None = None  # built on the first https hand-off
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

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        assert self.url is not None
        parts = urlsplit(self.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.scheme == "https":
            with self._lock:
                if self._tls is None:
                    self._tls = _tls_context(self._verify)
                context = self._tls
            return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=self._connect_timeout,
                                               context=context), path
        if parts.scheme != "http":
            raise ValueError(f"worker URL must be http(s), not {parts.scheme!r}")
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self._connect_timeout), path

    def _send(self, job_id: UUID | None, delivered: threading.Event) -> bool:
        body = json.dumps({"job_id": str(job_id)} if job_id else {}).encode()
        written = False
        conn: http.client.HTTPConnection | None = None
        try:
            conn, path = self._connection()
            conn.request("POST", path, body=body, headers=self._headers)  # returns once the body is written
            written = True
            delivered.set()
            if conn.sock is not None:
                conn.sock.settimeout(self._response_timeout)
            conn.getresponse().read()
        except TimeoutError:
            if not written:
                return self._failed("timed out")
            # delivered; the worker is busy running the job, as intended
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not written:
                return self._failed(str(exc) or type(exc).__name__)
            # the request was written: what the worker answers (or how it hangs up) does not matter
        finally:
            delivered.set()
            if conn is not None:
                conn.close()
        with self._lock:
            self.sent += 1
        return True

    def _failed(self, reason: str) -> bool:
        with self._lock:
            self.failed += 1
        log.warning("hand-off to %s failed (%s); the sweeper will pick the job up", self.url, reason)
        return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
