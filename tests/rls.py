"""Act inside a transaction the way PostgREST (and Realtime's authorization
read) does: switch to the JWT's role and publish its claims. Never as owner."""

from __future__ import annotations

import json
from typing import Any

import psycopg


def act_as(conn: psycopg.Connection, claims: dict[str, Any], *, method: str = "GET", path: str = "/") -> None:
    """Call inside `conn.transaction()`: every setting is local to it."""
    conn.execute(
        "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true),"
        " set_config('request.method', %s, true), set_config('request.path', %s, true)",
        (claims.get("role", "anon"), json.dumps(claims), method, path),
    )
