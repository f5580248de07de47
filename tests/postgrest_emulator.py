"""A test-only stand-in for Supabase's hosted REST edge (PostgREST RPC).

supabase-py's real HTTP requests are intercepted with respx and executed
against the test database the way PostgREST does it: verify the JWT, switch
to its role and set request.jwt.claims inside a transaction, bind the JSON
body to the function's named arguments by their declared types, and answer
with PostgREST's JSON and error shapes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jwt
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from tests.rls import act_as

RPC_PATH = re.compile(r"^/rest/v1/rpc/(?P<fn>[A-Za-z_][A-Za-z0-9_]*)$")


def _status_for(sqlstate: str) -> int:
    """PostgREST's SQLSTATE -> HTTP status table (the parts we can hit)."""
    if sqlstate in ("23503", "23505"):
        return 409
    if sqlstate == "42501":
        return 403
    if sqlstate in ("42883", "42P01"):
        return 404
    if sqlstate.startswith(("08", "53")):
        return 503
    if sqlstate.startswith(("09", "25", "2D", "38", "39", "3B", "40", "54", "55", "57", "58", "F0", "HV", "XX")):
        return 500
    if sqlstate.startswith("P0") and sqlstate != "P0001":
        return 500
    return 400


def _error(status: int, code: str, message: str, details: str | None = None, hint: str | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        json={"code": code, "message": message, "details": details, "hint": hint},
        headers={"content-type": "application/json; charset=utf-8"},
    )


class PostgrestEmulator:
    def __init__(self, conninfo: str, jwt_secret: str) -> None:
        self.jwt_secret = jwt_secret
        self.pool = ConnectionPool(conninfo, min_size=1, max_size=10, kwargs={"autocommit": True}, open=True)
        self.calls: list[str] = []

    def close(self) -> None:
        self.pool.close()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        match = RPC_PATH.match(request.url.path)
        if request.method != "POST" or not match:
            return _error(404, "PGRST125", f"invalid path {request.url.path}")
        fn = match["fn"]
        self.calls.append(fn)
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return _error(401, "PGRST301", "no authorization")
        try:
            claims = jwt.decode(auth[7:], self.jwt_secret, algorithms=["HS256"], options={"verify_aud": False})
        except jwt.PyJWTError as exc:
            return _error(401, "PGRST301", f"JWT invalid: {exc}")
        if request.headers.get("apikey") is None:
            return _error(401, "PGRST301", "no apikey")
        try:
            body: dict[str, Any] = json.loads(request.content or b"{}")
        except ValueError:
            return _error(400, "PGRST102", "invalid JSON body")
        return self._call(fn, body, claims)

    def _call(self, fn: str, body: dict[str, Any], claims: dict[str, Any]) -> httpx.Response:
        with self.pool.connection() as conn:
            found = conn.execute(
                """
                select p.proretset,
                       coalesce(p.proargnames, '{}'),
                       array(select format_type(t, null) from unnest(p.proargtypes) t)
                from pg_proc p
                where p.pronamespace = 'public'::regnamespace and p.proname = %s
                """,
                (fn,),
            ).fetchone()
            if found is None:
                return _error(404, "PGRST202", f"Could not find the function public.{fn}")
            returns_set, arg_names, arg_types = found
            arg_types = dict(zip(arg_names, arg_types))
            unknown = set(body) - set(arg_types)
            if unknown:
                return _error(404, "PGRST202", f"public.{fn} has no parameters {sorted(unknown)}")
            names = list(body)
            record_cols = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(arg_types[n])) for n in names
            )
            call_args = sql.SQL(", ").join(
                sql.SQL("{} => _args.{}").format(sql.Identifier(n), sql.Identifier(n)) for n in names
            )
            call = sql.SQL("public.{}({})").format(sql.Identifier(fn), call_args)
            source = (
                sql.SQL("from jsonb_to_record(%(body)s::jsonb) as _args({})").format(record_cols)
                if names
                else sql.SQL("")
            )
            if returns_set:
                query = sql.SQL(
                    "select coalesce(json_agg(_r), '[]'::json) from (select _c.* {} cross join lateral {} _c) _r"
                    if names
                    else "select coalesce(json_agg(_r), '[]'::json) from (select _c.* from {} _c) _r"
                )
                query = query.format(source, call) if names else query.format(call)
            else:
                query = sql.SQL("select to_json({}) {}").format(call, source)
            try:
                with conn.transaction():
                    act_as(conn, claims, method="POST", path=f"/rpc/{fn}")
                    value = conn.execute(query, {"body": json.dumps(body)}).fetchone()[0]
            except psycopg.Error as exc:
                diag = exc.diag
                code = exc.sqlstate or "XX000"
                return _error(
                    _status_for(code), code, diag.message_primary or str(exc), diag.message_detail, diag.message_hint
                )
        return httpx.Response(
            200, content=json.dumps(value).encode(), headers={"content-type": "application/json; charset=utf-8"}
        )
