"""The throwaway PostgreSQL every benchmark runs on, started and removed in one place.

An embedded server from the `pgserver` wheel in a new folder directly under /tmp:
the server's unix socket lives in its data folder, and a socket path may not exceed
107 bytes, so a deep temporary folder would fail to start. The server is stopped
and its folder deleted when the block ends, on an error too."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg


@dataclass(frozen=True)
class ThrowawayDatabase:
    url: str
    data_dir: Path  # the cluster's folder (benchmarks read the server's CPU time from its postmaster.pid)

    def add_user(self) -> str:
        """A new row in auth.users (jobs need an owner); its id."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("insert into auth.users (id) values (gen_random_uuid()) returning id").fetchone()
        assert row is not None
        return str(row[0])


@contextmanager
def throwaway_database(prefix: str, *, migrated: bool = True) -> Iterator[ThrowawayDatabase]:
    """Start the server, apply the ai-jobs migrations (unless `migrated` is False: a
    harness that installs several systems migrates itself), yield it, remove it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver

    data_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(data_dir, cleanup_mode="delete")
        try:
            database = ThrowawayDatabase(str(server.get_uri()), data_dir)
            if migrated:
                from ai_jobs.database.migrations import migrate

                migrate(database.url)
            yield database
        finally:
            try:
                server.cleanup()
            except Exception:  # noqa: BLE001 - a server that failed to stop is removed with its folder below
                pass
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
