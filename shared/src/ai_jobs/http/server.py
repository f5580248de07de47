"""A real local HTTP server for the Vercel app (threaded werkzeug), with the
sweep on a timer standing in for Vercel Cron."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import IO, TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

from werkzeug import serving
from werkzeug.serving import WSGIRequestHandler, make_server

from ai_jobs.http.io import MalformedBodyError
from ai_jobs.http.problems import PROBLEM_JSON, Problem

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from _typeshed.wsgi import WSGIEnvironment

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


class CannotListen(OSError):
    """Any other reason the address cannot be bound (a --host that is no address of
    this machine or does not resolve, a port below 1024 without the privilege)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


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
        raise CannotListen(host, port, exc.strerror or str(exc)) from exc
    return sock


# A chunk-size line (RFC 9112 7.1): 1 to 16 hex digits (a 64-bit size), optional
# extensions (ignored), CRLF. Longer lines, other characters or a bare LF are refused.
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")
_CHUNK_LINE_LIMIT = 4096  # bytes in a chunk-size line (with extensions) or a trailer line
_MAX_TRAILER_LINES = 100


class ChunkedBody(io.RawIOBase):
    """A `Transfer-Encoding: chunked` request body, de-chunked strictly, in place of
    werkzeug's DechunkedInput: that one accepted any int() (`-0`, `0x10`, `1_0`),
    raised a bare OSError for a bad size, and for a chunk announced larger than the
    data sent before the client closed it reported more bytes than it had copied,
    so CPython read past the buffer and the server crashed (SIGSEGV).

    Here a chunk size is 1 to 16 hex digits on a line of at most 4 KiB ending in
    CRLF, each chunk's data must be followed by CRLF, the last chunk (size 0) by at
    most 100 trailer lines (ignored) and an empty line; `readinto` only ever reports
    the bytes it copied. Anything else, or the connection ending before the last
    chunk, raises MalformedBodyError (400 malformed_body). Reads block until the
    buffer is full or the body ends, so a caller asking for its limit plus one byte
    gets its answer as soon as that byte arrives."""

    def __init__(self, rfile: IO[bytes]) -> None:
        super().__init__()
        self._rfile = rfile
        self._left = 0  # bytes still to come in the current chunk
        self._after_data = False  # a chunk's data was read: its CRLF comes next
        self._done = False
        self._error: MalformedBodyError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._error is not None:
            raise self._error
        view = memoryview(buffer).cast("B")
        filled = 0
        try:
            while filled < len(view) and not self._done:
                if self._left == 0:
                    self._next_chunk()
                    continue
                data = self._rfile.read(min(self._left, len(view) - filled))
                if not data:
                    raise MalformedBodyError("the request body ended inside a chunk: the connection closed before "
                                             "the chunk's announced size had arrived")
                view[filled:filled + len(data)] = data
                filled += len(data)
                self._left -= len(data)
        except MalformedBodyError as exc:
            self._error = exc
            raise
        return filled

    def _line(self, what: str) -> bytes:
        line = self._rfile.readline(_CHUNK_LINE_LIMIT + 1)
        if not line:
            raise MalformedBodyError(f"the request body ended before its last chunk: the connection closed "
                                     f"where {what} was expected")
        if not line.endswith(b"\n"):
            if len(line) > _CHUNK_LINE_LIMIT:
                raise MalformedBodyError(f"malformed chunked body: a line over {_CHUNK_LINE_LIMIT} bytes where "
                                         f"{what} was expected")
            raise MalformedBodyError(f"the request body ended before its last chunk: the connection closed "
                                     f"inside {what}")
        return line

    def _next_chunk(self) -> None:
        if self._after_data:
            end = self._rfile.read(2)
            if end != b"\r\n":
                if len(end) < 2 and b"\r\n".startswith(end):
                    raise MalformedBodyError("the request body ended before its last chunk: the connection closed "
                                             "after a chunk's data")
                raise MalformedBodyError("malformed chunked body: a chunk's data is not followed by CRLF (the "
                                         "data is longer than its chunk size)")
            self._after_data = False
        line = self._line("a chunk-size line")
        match = _CHUNK_SIZE_LINE.fullmatch(line)
        if match is None:
            shown = line[:40].decode("latin-1")
            raise MalformedBodyError(f"malformed chunked body: chunk size line {shown!r} is not 1 to 16 hexadecimal "
                                     "digits (optionally ;extensions) followed by CRLF")
        size = int(match.group(1), 16)
        if size:
            self._left = size
            self._after_data = True
            return
        for _ in range(_MAX_TRAILER_LINES + 1):  # the last chunk: trailer fields (ignored), then an empty line
            if self._line("the end of the chunked body") == b"\r\n":
                self._done = True
                return
        raise MalformedBodyError(f"malformed chunked body: more than {_MAX_TRAILER_LINES} trailer lines")


class ProblemRequestHandler(WSGIRequestHandler):
    """werkzeug's handler, except that the errors http.server answers on its own (a
    request line over 64 KiB: 414; a header line over 64 KiB or more than 100 headers:
    431; a malformed request line: 400) are problem+json like the app's, not HTML, and
    a chunked body is read by ChunkedBody."""

    def make_environ(self) -> WSGIEnvironment:
        """werkzeug's environ, with our strict ChunkedBody as the input of a chunked
        request instead of werkzeug's DechunkedInput (see ChunkedBody)."""
        environ = super().make_environ()
        if isinstance(environ["wsgi.input"], serving.DechunkedInput):
            environ["wsgi.input"] = ChunkedBody(self.rfile)
        return environ

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
    Raises PortInUse when the port is taken, CannotListen when the address cannot be bound."""
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
