"""A real local HTTP server for the Vercel app (threaded werkzeug), with the
sweep on a timer standing in for Vercel Cron."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus

from werkzeug.serving import WSGIRequestHandler, make_server

from ai_jobs.http.problems import PROBLEM_JSON, Problem

log = logging.getLogger(__name__)

# Codes for the errors the HTTP server itself answers (before the app sees the request).
_SERVER_CODES = {400: "bad_request", 414: "uri_too_long", 431: "header_too_large", 501: "not_implemented",
                 505: "http_version_not_supported"}


class ProblemRequestHandler(WSGIRequestHandler):
    """werkzeug's handler, except that the errors http.server answers on its own (a
    request line over 64 KiB: 414; a header line over 64 KiB or more than 100 headers:
    431; a malformed request line: 400) are problem+json like the app's, not HTML."""

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
    """Bind first (port 0 picks a free port), then build the app knowing its own URL."""
    placeholder = make_server(host, port, lambda env, start: [], threaded=True, request_handler=ProblemRequestHandler)
    url = f"http://{host}:{placeholder.server_port}"
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
