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
    and `cafile` is its certificate, for the client to trust."""

    def __init__(self, folder: Path, *, connect_delay: float = 0.15) -> None:
        cert, key = self_signed_certificate(folder)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        self.cafile = cert
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
    instances.

    The instances are forked by a helper process (`python -m tests.latency_proxy`)
    that starts no thread, never by this one: here the proxy's threads are inside
    OpenSSL and the interpreter at any moment, and a child forked then inherits
    their locks held (2 of 200 instances hung that way in CI)."""
    import subprocess
    import sys

    before = len(target.delivered_job_ids())
    command = [
        sys.executable, "-m", "tests.latency_proxy", "--database-url", database_url, "--user-id", str(user_id),
        "--url", target.url, "--cafile", str(target.cafile), "--creates", str(creates),
        "--wait-seconds", str(wait_seconds), "--concurrency", str(concurrency),
    ]
    root = Path(__file__).resolve().parent.parent
    helper = subprocess.Popen(command, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert helper.stdin is not None and helper.stdout is not None
    reports: list[dict[str, Any]] = []
    try:
        for line in helper.stdout:  # one report per instance, then "ready" with the instances frozen
            if line.strip() == "ready":
                break
            reports.append(json.loads(line))
        wanted = {r["job_id"] for r in reports if "job_id" in r}
        deadline = time.monotonic() + settle_seconds
        while time.monotonic() < deadline and not wanted <= set(target.delivered_job_ids()[before:]):
            time.sleep(0.05)
        delivered = len(wanted & set(target.delivered_job_ids()[before:]))
    finally:
        helper.stdin.close()  # the helper kills its frozen instances and exits
        helper.wait(30)
    failed = [r for r in reports if "job_id" not in r]
    assert not failed, f"{len(failed)} of {creates} instances failed: {failed[:3]}"
    assert len(reports) == creates, f"only {len(reports)} of {creates} instances reported a create"
    return CreateRun([r["elapsed"] for r in reports], [r["job_id"] for r in reports], delivered,
                     sum(r["unconfirmed"] for r in reports))


def _fork_instances(args: Any) -> None:
    """The helper process: fork `creates` instances in waves of `concurrency`, print
    one JSON report per instance (or its error), print "ready" once every instance
    has reported and frozen, then kill them all when stdin closes. It starts no
    thread itself; each instance's pool starts its own after the fork."""
    import faulthandler
    import logging
    import os
    import signal
    import sys
    import traceback

    from ai_jobs.dispatch import Dispatcher
    from ai_jobs.http import operations
    from ai_jobs.http.auth import Principal
    from ai_jobs.http.schemas import CreateJobRequest
    from ai_jobs.http.services import Services
    from ai_jobs.registry import load_job_modules
    from ai_jobs.settings import Settings
    from ai_jobs.store.postgres import PostgresStore

    logging.disable(logging.WARNING)  # a lost hand-off is counted in its report; no warning per instance
    settings = Settings(
        store="postgres", database_url=args.database_url, worker_url=args.url, worker_secret="handoff-secret",
        handoff_wait_seconds=args.wait_seconds, max_active_per_user=100_000,
    )
    registry = load_job_modules(demo=True)  # imported once here, as a warm function has them; the demo type is the job
    client_context = ssl.create_default_context(cafile=args.cafile)
    who = Principal(user_id=args.user_id, role="authenticated", claims={})
    body = CreateJobRequest(type="example.countdown", input={"steps": 1, "step_seconds": 0})

    def instance(write_end: int) -> None:
        try:
            store = PostgresStore(args.database_url, min_size=1, max_size=1)
            svc = Services(settings=settings, registry=registry, store=store)
            dispatcher = Dispatcher(
                args.url, "handoff-secret", wait_seconds=args.wait_seconds, connect_timeout=5.0, verify=client_context
            )
            svc.__dict__["dispatcher"] = dispatcher  # this instance's hand-off client, trusting the proxy's certificate
            started = time.perf_counter()
            result = operations.create_job(svc, who, body, None)
            elapsed = time.perf_counter() - started
            store.close()  # only the hand-off is under test; 200 frozen instances would exhaust max_connections
            report: dict[str, Any] = {
                "elapsed": elapsed, "job_id": str(result.job.id), "unconfirmed": dispatcher.unconfirmed,
            }
        except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails with it
            report = {"error": "".join(traceback.format_exception_only(exc)).strip(), "trace": traceback.format_exc()}
        os.write(write_end, (json.dumps(report) + "\n").encode())
        os.close(write_end)  # the helper reads until every instance of the wave closed it
        faulthandler.cancel_dump_traceback_later()
        os.kill(os.getpid(), signal.SIGSTOP)  # the response is out: the function is frozen

    children: list[int] = []
    try:
        for wave in range(0, args.creates, args.concurrency):
            read_end, write_end = os.pipe()
            for _ in range(min(args.concurrency, args.creates - wave)):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - runs in the child
                    # a hung instance prints every thread's stack to stderr and exits; its
                    # pipe end closes and the test fails with the count
                    faulthandler.dump_traceback_later(60, exit=True)
                    try:
                        os.close(read_end)
                        instance(write_end)
                    finally:
                        os._exit(0)
                children.append(pid)
            os.close(write_end)
            with os.fdopen(read_end) as lines:
                for line in lines.read().splitlines():
                    print(line, flush=True)
        print("ready", flush=True)
        sys.stdin.read()  # until the test has counted the deliveries (or died)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ChildProcessError, ProcessLookupError):
                pass


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=_fork_instances.__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--user-id", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--creates", type=int, required=True)
    parser.add_argument("--wait-seconds", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    _fork_instances(parser.parse_args())
