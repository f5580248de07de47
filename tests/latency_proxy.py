"""A TLS front for the hand-off target that adds latency to every new
connection, as a cold connection to a Vercel deployment does (TCP + TLS to
the edge), plus a recording stand-in for the worker endpoint behind it.

`LatencyProxy` accepts TCP, waits `connect_delay` seconds, then performs the
TLS handshake (so the client's handshake takes that much longer) and relays
bytes to the backend in both directions. `RecordingWorker` parses each HTTP
request (headers + Content-Length body) and records the JSON body it got in
full; a request cut off before its body ends is not recorded. A thread per
connection, loopback only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 / localhost and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class RecordingWorker:
    """Counts hand-off requests that arrived whole (the worker would run them)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.partial = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=_accept_loop, args=(self._listener, self._handle), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed before the headers ended")
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed before the body ended")
                    body += chunk
                self.bodies.append(json.loads(body[:length]))
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            except (OSError, ValueError):
                self.partial += 1

    def close(self) -> None:
        self._listener.close()


class LatencyProxy:
    """Accept, wait `connect_delay`, then the TLS handshake, then relay to the backend."""

    def __init__(self, backend_port: int, server_context: ssl.SSLContext, connect_delay: float) -> None:
        self.backend_port = backend_port
        self.server_context = server_context
        self.connect_delay = connect_delay
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=_accept_loop, args=(self._listener, self._handle), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        self.connections += 1
        time.sleep(self.connect_delay)
        try:
            conn.settimeout(10)
            tls = self.server_context.wrap_socket(conn, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.backend_port), timeout=10)
        except (OSError, ssl.SSLError):
            conn.close()
            return

        def relay(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except (OSError, ssl.SSLError):
                pass
            finally:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except (OSError, ValueError):
                    pass

        back = threading.Thread(target=relay, args=(upstream, tls), daemon=True)
        back.start()
        relay(tls, upstream)
        back.join(10)
        upstream.close()
        tls.close()

    def close(self) -> None:
        self._listener.close()


def _accept_loop(listener: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # closed
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


class HandoffTarget:
    """Starts RecordingWorker behind LatencyProxy; `url` is the proxy's https URL
    and `client_context` trusts its certificate."""

    def __init__(self, folder: Path, *, connect_delay: float = 0.15) -> None:
        cert, key = self_signed_certificate(folder)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        self.client_context = ssl.create_default_context(cafile=str(cert))
        self.worker = RecordingWorker()
        self.proxy = LatencyProxy(self.worker.port, server_context, connect_delay)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.proxy.port}"

    def delivered_job_ids(self) -> list[str]:
        return [str(body.get("job_id")) for body in list(self.worker.bodies)]

    def close(self) -> None:
        self.proxy.close()
        self.worker.close()


@dataclass
class CreateRun:
    latencies: list[float]
    job_ids: list[str]
    delivered: int
    unconfirmed: int

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def creates_with_frozen_functions(
    database_url: str,
    user_id: Any,
    target: HandoffTarget,
    *,
    creates: int,
    wait_seconds: float,
    concurrency: int = 8,
    settle_seconds: float = 10.0,
) -> CreateRun:
    """POST /api/jobs's operation `creates` times, each in a fresh "function
    instance": a forked process with its own store, Services and Dispatcher, so
    every hand-off opens a new TLS connection through the proxy. The instance
    freezes itself (SIGSTOP) the moment the create returns, as Vercel freezes a
    function after its response: its sockets stay open, nothing more runs. Then
    count the hand-offs the worker endpoint received whole, and kill the frozen
    instances."""
    import os
    import signal

    from ai_jobs.dispatch import Dispatcher
    from ai_jobs.http import operations
    from ai_jobs.http.auth import Principal
    from ai_jobs.http.schemas import CreateJobRequest
    from ai_jobs.http.services import Services
    from ai_jobs.settings import Settings
    from ai_jobs.store.postgres import PostgresStore

    settings = Settings(
        store="postgres", database_url=database_url, worker_url=target.url, worker_secret="handoff-secret",
        handoff_wait_seconds=wait_seconds, max_active_per_user=100_000,
    )
    who = Principal(user_id=user_id, role="authenticated", claims={})
    body = CreateJobRequest(type="example.countdown", input={"steps": 1, "step_seconds": 0})
    before = len(target.delivered_job_ids())

    def instance(write_end: int) -> None:
        store = PostgresStore(database_url, min_size=1, max_size=1)
        svc = Services(settings=settings, store=store)
        dispatcher = Dispatcher(
            target.url, "handoff-secret", wait_seconds=wait_seconds, connect_timeout=5.0, verify=target.client_context
        )
        svc.__dict__["dispatcher"] = dispatcher  # this instance's hand-off client, trusting the proxy's certificate
        started = time.perf_counter()
        result = operations.create_job(svc, who, body, None)
        elapsed = time.perf_counter() - started
        store.close()  # only the hand-off is under test; 200 frozen instances would exhaust max_connections
        report = {"elapsed": elapsed, "job_id": str(result.job.id), "unconfirmed": dispatcher.unconfirmed}
        os.write(write_end, (json.dumps(report) + "\n").encode())
        os.close(write_end)  # the parent reads until every instance of the wave closed it
        signal.alarm(0)
        os.kill(os.getpid(), signal.SIGSTOP)  # the response is out: the function is frozen

    children: list[int] = []
    reports: list[dict[str, Any]] = []
    try:
        for wave in range(0, creates, concurrency):
            read_end, write_end = os.pipe()
            size = min(concurrency, creates - wave)
            for _ in range(size):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child
                    code = 0
                    # Forked from a threaded process: should a lock another thread held at
                    # the fork ever block this child, SIGALRM ends it, its pipe end closes
                    # and the count below fails the test instead of hanging the suite.
                    signal.alarm(60)
                    try:
                        os.close(read_end)
                        instance(write_end)
                    except BaseException:  # noqa: BLE001
                        code = 1
                    finally:
                        os._exit(code)
                children.append(pid)
            os.close(write_end)
            with os.fdopen(read_end) as lines:
                reports += [json.loads(line) for line in lines.read().splitlines()]
            # a wave's pipe closes once each child has reported (and stopped) or died
        wanted = {r["job_id"] for r in reports}
        deadline = time.monotonic() + settle_seconds
        while time.monotonic() < deadline and not wanted <= set(target.delivered_job_ids()[before:]):
            time.sleep(0.05)
        delivered = len(wanted & set(target.delivered_job_ids()[before:]))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            except ProcessLookupError:
                pass
    assert len(reports) == creates, f"only {len(reports)} of {creates} instances reported a create"
    return CreateRun([r["elapsed"] for r in reports], [r["job_id"] for r in reports], delivered,
                     sum(r["unconfirmed"] for r in reports))
