"""Embedded PostgreSQL (the `pgserver` wheel) for development and tests.

Data lives under a project-local folder, so restarting `make dev` keeps every
job. The server is shared by all processes using the same folder and stops
when the last one exits.

pgserver counts its users in `<pgdata>/.handle_pids.json`: each process adds
its pid when it attaches and removes it at exit, and the process that removes
the last pid stops the server. A process killed without running its exit
handlers (SIGKILL, or a default SIGTERM in a command such as `ai-jobs watch`)
never removes its pid, so the server would outlive everyone. We therefore drop
the pids of dead processes from that list whenever a process attaches and
again just before each of our processes detaches.
"""

from __future__ import annotations

import atexit
import json
import os
import warnings
from pathlib import Path
from typing import Any

_servers: dict[Path, Any] = {}

HANDLES_FILE = ".handle_pids.json"  # pgserver's list of attached processes


def _import_pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "embedded PostgreSQL needs the 'pgserver' package: pip install 'ai-jobs[embedded]', "
            "or set DATABASE_URL"
        ) from exc
    return pgserver


def _alive(pid: int) -> bool:
    import psutil  # a pgserver dependency

    if pid == os.getpid():
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.AccessDenied:
        return True  # it exists; assume it still uses the server
    except (psutil.NoSuchProcess, ValueError):
        return False


def prune_dead_handles(pgdata: Path) -> list[int]:
    """Remove pids of processes that are gone from pgserver's handle list
    (under pgserver's own inter-process lock); returns the pids removed."""
    from pgserver.postgres_server import PostgresServer

    path = pgdata / HANDLES_FILE
    with PostgresServer._lock:
        try:
            pids = [int(p) for p in json.loads(path.read_text())]
        except (FileNotFoundError, ValueError, TypeError):
            return []
        dead = [pid for pid in pids if not _alive(pid)]
        if dead:
            path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
    return dead


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or attach to) the embedded server; returns its connection URI."""
    pgserver = _import_pgserver()
    pgdata = (data_dir / "pgdata").resolve()
    if pgdata not in _servers:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        prune_dead_handles(pgdata)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _servers[pgdata] = pgserver.get_server(pgdata, cleanup_mode="stop")
        # atexit runs last-registered first: this runs before pgserver's own
        # detach, so a process that was killed cannot keep the server alive.
        atexit.register(prune_dead_handles, pgdata)
    return str(_servers[pgdata].get_uri())


def ensure_embedded_database(data_dir: Path) -> str:
    """Start the embedded server and bring its schema up to date."""
    from ai_jobs.database.migrations import migrate

    uri = start_embedded_postgres(data_dir)
    migrate(uri)
    return uri
