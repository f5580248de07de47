"""POSTs with a wall-clock deadline (the alert webhook).

httpx's timeouts bound each connect, read and write separately, so a receiver that
sends its response a byte at a time keeps a POST open for as long as it likes. Here a
POST runs on a short-lived thread that the caller waits for only until the deadline;
past it, every socket the POST opened is shut down (which ends a TLS handshake, read
or write blocked on it at once, from any thread), so neither the thread nor the
connection outlives the deadline by more than a moment. Only a DNS lookup cannot be
interrupted: its thread ends when the lookup does, and never connects.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore

log = logging.getLogger(__name__)

# How long a POST cut off at its deadline is waited for once its sockets are shut down
# (it ends within milliseconds, unless it is still resolving the host).
ABORT_GRACE_SECONDS = 1.0


class _AbortableBackend(httpcore.NetworkBackend):
    """httpcore's blocking socket backend that remembers the sockets it opened (as
    duplicates, which a TLS wrap leaves usable), so abort() can shut them all down."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._aborted = False

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        self._refuse_if_aborted()
        return self._track(self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                                   socket_options=socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        self._refuse_if_aborted()
        return self._track(self._inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def _refuse_if_aborted(self) -> None:
        if self._aborted:
            raise httpcore.ConnectError("the POST was cut off at its deadline")

    def _track(self, stream: httpcore.NetworkStream) -> httpcore.NetworkStream:
        handle = stream.get_extra_info("socket").dup()
        with self._lock:
            aborted = self._aborted
            if not aborted:
                self._open.add(handle)
        if aborted:  # cut off while connecting (a slow DNS lookup): never used
            handle.close()
            stream.close()
            self._refuse_if_aborted()
        return _AbortableStream(stream, self, handle)

    def release(self, handle: socket.socket) -> None:
        with self._lock:
            self._open.discard(handle)
        handle.close()

    def abort(self) -> None:
        """Shut down every open socket (a blocked operation on it fails at once) and
        refuse new connections."""
        with self._lock:
            self._aborted = True
            handles, self._open = list(self._open), set()
        for handle in handles:
            try:
                handle.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer
            handle.close()

    @property
    def open_sockets(self) -> int:
        with self._lock:
            return len(self._open)


class _AbortableStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _AbortableBackend, handle: socket.socket) -> None:
        self._inner, self._backend, self._handle = inner, backend, handle

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._backend.release(self._handle)

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        try:
            tls = self._inner.start_tls(ssl_context, server_hostname=server_hostname, timeout=timeout)
        except BaseException:
            self._backend.release(self._handle)  # httpcore closed the socket
            raise
        return _AbortableStream(tls, self._backend, self._handle)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for this URL (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY,
    minus NO_PROXY), as httpx's default client used it."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class Webhook:
    """Sequential POSTs to one URL, each with a wall-clock deadline. close() closes every
    socket they opened; a closed Webhook opens no more."""

    def __init__(self, url: str, *, user_agent: str) -> None:
        self.url = url
        self.backend = _AbortableBackend()
        proxy = _proxy_for(url)
        self._pool: httpcore.ConnectionPool = (
            httpcore.HTTPProxy(proxy_url=proxy, network_backend=self.backend) if proxy
            else httpcore.ConnectionPool(network_backend=self.backend)
        )
        self._headers = [(b"User-Agent", user_agent.encode()), (b"Content-Type", b"application/json"),
                         (b"Accept", b"*/*")]

    def post(self, body: bytes, *, deadline: float) -> tuple[bool, str]:
        """(delivered, what happened): a 2xx by `deadline` (time.monotonic()), else the
        status, the error, or the deadline passing, at which point the POST is cut off."""
        outcome: dict[str, Any] = {}

        def run() -> None:
            left = max(deadline - time.monotonic(), 0.001)
            try:
                with self._pool.stream(
                    "POST", self.url, headers=self._headers, content=body,
                    extensions={"timeout": {"connect": left, "read": left, "write": left, "pool": left}},
                ) as response:  # the body is never read: closing drops the connection
                    outcome["status"] = response.status
            except Exception as exc:  # noqa: BLE001 - any failure is a failed delivery
                outcome["error"] = type(exc).__name__

        thread = threading.Thread(target=run, name="ai-jobs-alert-webhook", daemon=True)
        thread.start()
        thread.join(max(deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            self.backend.abort()
            thread.join(ABORT_GRACE_SECONDS)
            if thread.is_alive():
                log.warning("alert webhook POST still resolving its host after its deadline; it is dropped")
            return False, "no response before the deadline"
        if "status" in outcome:
            status = int(outcome["status"])
            return 200 <= status < 300, f"HTTP {status}"
        return False, str(outcome.get("error", "no response"))

    def close(self) -> None:
        try:
            self._pool.close()
        finally:
            self.backend.abort()  # anything still open (a POST cut off while connecting)
