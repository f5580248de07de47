"""A real local HTTP server for the Vercel app (threaded werkzeug), with the
sweep on a timer standing in for Vercel Cron."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qsl, urlencode, urlsplit

from werkzeug import serving
from werkzeug.serving import WSGIRequestHandler, make_server

from ai_jobs.http.problems import PROBLEM_JSON, Problem

log = logging.getLogger(__name__)

# Codes for the errors the HTTP server itself answers (before the app sees the request).
_SERVER_CODES = {400: "bad_request", 414: "uri_too_long", 431: "header_too_large", 501: "not_implemented",
                 505: "http_version_not_supported"}


# Query parameters whose values never reach the request log (a token in a link, say).
_SECRET_PARAM_PARTS = ("token", "key", "secret", "password", "auth", "jwt", "sig", "code")


class PortInUse(OSError):
    """The port asked for is taken: the CLI says which command to run instead."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"port {port} is in use")
        self.host = host
        self.port = port


def use_colour(stream: object = None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def loggable_path(path: str) -> str:
    """The request path for the log, with secret-looking query values replaced by
    ``***`` (a fragment such as ``#token=`` never reaches the server at all)."""
    parts = urlsplit(path)
    if not parts.query:
        return path
    pairs = [(name, "***" if any(part in name.lower() for part in _SECRET_PARAM_PARTS) else value)
             for name, value in parse_qsl(parts.query, keep_blank_values=True)]
    return f"{parts.path}?{urlencode(pairs, safe='*')}"


def free_port_after(host: str, port: int, tries: int = 50) -> int | None:
    """The first port above ``port`` that binds now, to suggest instead of a taken one."""
    for candidate in range(port + 1, min(port + 1 + tries, 65536)):
        with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, candidate))
            except OSError:
                continue
            return candidate
    return None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(host: str, port: int) -> socket.socket:
    """Bind and listen ourselves: werkzeug's own bind prints its advice and calls
    sys.exit on a taken port; we raise PortInUse so the CLI can name the command."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from None
        raise
    return sock


class ProblemRequestHandler(WSGIRequestHandler):
    """werkzeug's handler, except that the errors http.server answers on its own (a
    request line over 64 KiB: 414; a header line over 64 KiB or more than 100 headers:
    431; a malformed request line: 400) are problem+json like the app's, not HTML."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One line per request: method, path (secret query values masked), status, size."""
        path = getattr(self, "path", None)
        if path is None or not getattr(self, "command", None):
            msg = self.requestline  # a malformed request line
        else:
            msg = f"{self.command} {loggable_path(path)} {self.request_version}"
        msg = msg.translate(self._control_char_table)
        code = str(code)
        if serving._log_add_style and not code.startswith("2"):
            colour = {"3": "36", "4": "33" if code == "404" else "31"}.get(code[:1], "35")
            msg = f"\x1b[{colour}m{msg}\x1b[0m"
        self.log("info", '"%s" %s %s', msg, code, size)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        name = _SERVER_CODES.get(code, phrase.lower().replace(" ", "_").replace("-", "_"))
        detail = ("; ".join(part for part in (message, explain) if part) or phrase)[:300]  # may quote the request
        body = json.dumps(Problem(code, name, detail, title=phrase).body()).encode()
        self.log_error("code %d, message %s", code, message)
        if not getattr(self, "request_version", "").startswith("HTTP/1"):
            self.request_version = "HTTP/1.0"  # a malformed request line still gets a status line and headers
        self.send_response(code, phrase)
        self.send_header("Content-Type", PROBLEM_JSON)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)
        self.close_connection = True


def serve(
    app_factory: Callable[[str], object],
    *,
    host: str,
    port: int,
    sweep: Callable[[], object] | None,
    sweep_interval: float,
    on_ready: Callable[[str], None],
    stop: threading.Event,
) -> None:
    """Bind first (port 0 picks a free port), then build the app knowing its own URL.
    Raises PortInUse when the port is taken."""
    serving._log_add_style = use_colour()  # werkzeug's request log writes to stderr
    sock = _bind(host, port)
    try:
        placeholder = make_server(host, port, lambda env, start: [], threaded=True,
                                  request_handler=ProblemRequestHandler, fd=sock.fileno())
    finally:
        sock.close()  # werkzeug works on its own duplicate of the descriptor
    url = f"http://{host}:{placeholder.port}"
    placeholder.app = app_factory(url)  # type: ignore[attr-defined]
    server = placeholder
    thread = threading.Thread(target=server.serve_forever, name="ai-jobs-http", daemon=True)
    thread.start()

    def sweeper() -> None:
        while not stop.wait(sweep_interval):
            try:
                report = sweep()  # type: ignore[misc]
                log.info("sweep: %s", report)
            except Exception:  # noqa: BLE001 - keep sweeping
                log.exception("sweep failed")

    if sweep is not None and sweep_interval > 0:
        threading.Thread(target=sweeper, name="ai-jobs-sweeper", daemon=True).start()
    on_ready(url)
    stop.wait()
    server.shutdown()
