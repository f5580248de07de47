"""Embedded PostgreSQL (the `pgserver` wheel) for development and tests.

Data lives under a project-local folder, so restarting `make dev` keeps every
job. The server is shared by all processes using the same folder and stops
when the last one exits.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

_servers: dict[Path, Any] = {}


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or attach to) the embedded server; returns its connection URI."""
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
    pgdata = (data_dir / "pgdata").resolve()
    if pgdata not in _servers:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _servers[pgdata] = pgserver.get_server(pgdata, cleanup_mode="stop")
    return str(_servers[pgdata].get_uri())


def ensure_embedded_database(data_dir: Path) -> str:
    """Start the embedded server and bring its schema up to date."""
    from ai_jobs.database.migrations import migrate

    uri = start_embedded_postgres(data_dir)
    migrate(uri)
    return uri
