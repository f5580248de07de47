"""JobStore over a direct PostgreSQL connection (psycopg 3 + a connection pool)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from ai_jobs.errors import InvalidArgumentError, StoreUnavailableError, error_from_sqlstate
from ai_jobs.store.base import Json, JobStore, SqlFunction


def _uses_transaction_pooler(conninfo: str) -> bool:
    """Supavisor/PgBouncer in transaction mode (port 6543) cannot keep prepared statements."""
    try:
        return urlparse(conninfo).port == 6543
    except ValueError:
        return False


@lru_cache(maxsize=256)
def _statement(function: SqlFunction, names: tuple[str, ...]) -> str:
    """`select * from public.fn(a => %(a)s, ...)`, composed once per argument set."""
    arguments = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in names
    )
    target = sql.SQL("public.{}({})").format(sql.Identifier(function.name), arguments)
    query = (sql.SQL("select * from {}") if function.returns_set else sql.SQL("select {} as value")).format(target)
    return query.as_string(None)


class PostgresStore(JobStore):
    """The embedded default and the adapter for DATABASE_URL."""

    def __init__(self, conninfo: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 2.5) -> None:
        """`timeout` bounds both a new connection (libpq connect_timeout, whole
        seconds, at least 2) and the wait for a free pooled one, so a request
        against a down database fails in seconds instead of the pool's default 30 s."""
        self.conninfo = conninfo
        prepare_threshold = None if _uses_transaction_pooler(conninfo) else 5
        self._pool = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "prepare_threshold": prepare_threshold,
                "connect_timeout": max(2, int(timeout)),
            },
            timeout=timeout,
            name="ai-jobs",
            open=True,
        )

    def call(self, function: SqlFunction, params: Mapping[str, Any]) -> Any:
        bound = {k: (Jsonb(v.value) if isinstance(v, Json) else v) for k, v in params.items() if v is not None}
        query = _statement(function, tuple(bound))
        try:
            with self._pool.connection() as conn:
                rows = conn.execute(query, bound).fetchall()
        except psycopg.Error as exc:
            diag = exc.diag
            if exc.sqlstate is None and isinstance(exc, psycopg.DataError):
                # refused before it reached the server, e.g. a NUL character in a text value
                raise InvalidArgumentError(str(exc)) from exc
            if exc.sqlstate is None:  # connection trouble, pool timeout
                raise StoreUnavailableError(f"database unavailable: {exc}") from exc
            raise error_from_sqlstate(
                exc.sqlstate, diag.message_primary or str(exc), diag.message_hint, diag.message_detail
            ) from exc
        if function.returns_set:
            return rows
        return rows[0]["value"]

    def close(self) -> None:
        self._pool.close()
