"""Wake-ups for the long-lived `ai-jobs worker`: LISTEN on a direct connection.

The fast-path migration sends `NOTIFY ai_jobs_due` when a statement inserts a job
that is due now. A worker that listens starts it within milliseconds instead of at
its next poll. LISTEN needs a session of its own: a transaction pooler (Supavisor
or PgBouncer in transaction mode, port 6543) does not deliver notifications, so
there, and whenever the listening connection fails, the worker polls.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "ai_jobs_due"
STOP_CHECK_SECONDS = 0.25  # a stop request is noticed at least this often while waiting


class DueListener:
    """A dedicated autocommit connection that LISTENs on ai_jobs_due."""

    def __init__(self, conninfo: str, *, connect_timeout: int = 5) -> None:
        self._conn: psycopg.Connection | None = psycopg.connect(
            conninfo, autocommit=True, connect_timeout=connect_timeout
        )
        self._conn.execute(f"listen {CHANNEL}")

    @property
    def active(self) -> bool:
        return self._conn is not None

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Block until a notification (True), `timeout` seconds, or `stop` (False).
        Notifications that arrived while the worker was busy wake it at once: at worst
        one claim finds nothing. A broken connection turns this into a plain sleep
        (the caller's poll) for the rest of the process."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._conn is None:
                stop.wait(left)
                return False
            try:
                for _ in self._conn.notifies(timeout=min(left, STOP_CHECK_SECONDS), stop_after=1):
                    return True
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); polling from now on", type(exc).__name__)
                self.close()
        return False

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass
