"""A real local HTTP server for the Vercel app (threaded werkzeug), with the
sweep on a timer standing in for Vercel Cron."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from werkzeug.serving import make_server

log = logging.getLogger(__name__)


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
    placeholder = make_server(host, port, lambda env, start: [], threaded=True)
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
