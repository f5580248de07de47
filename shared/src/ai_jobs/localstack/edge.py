"""A local Supabase edge for `ai-jobs dev`: Realtime (Postgres Changes on
public.ai_jobs) and a PostgREST-shaped read of public.ai_jobs, on loopback.

Development only. A deployed project talks to Supabase's own Realtime and
PostgREST; this edge exists so the demo console (and an app under development)
sees pushed updates from the embedded PostgreSQL, with supabase-js 2.119.1
unchanged. It reproduces what that client and the real server do. Sources
(client: tests/browser/js/node_modules/@supabase/...; server: github.com/supabase/realtime):

- realtime-js ``dist/main/RealtimeChannel.js`` (join payload, ``_updatePostgresBindings``,
  ``_updateFilterMessage`` matching ``payload.ids``, ``_getPayloadRecords``),
  ``dist/main/RealtimeClient.js`` (``_performAuth``: ``access_token`` pushes, heartbeats),
  ``dist/main/lib/transformers.js`` (``columns`` types);
- ``@supabase/phoenix`` ``assets/js/phoenix/serializer.js`` (vsn 2.0.0 array frames),
  ``channel.js`` (``phx_close``, ``phx_reply`` refs);
- postgrest-js ``dist/index.cjs`` (``maybeSingle`` asks for an array, ``Accept-Profile``);
- server ``lib/realtime_web/channels/realtime_channel.ex`` (``join``,
  ``handle_info(:postgres_subscribe)``, ``confirm_token``, ``handle_in("access_token")``,
  ``shutdown_response``, ``push_system_message``) and the walrus RLS step
  (``realtime.apply_rls``: role + claims per subscriber, column privileges, DELETE
  unfiltered, ``max_record_bytes``).

Realtime (``/realtime/v1/websocket?apikey=<anon JWT>&vsn=2.0.0``)
  * Phoenix frames ``[join_ref, ref, topic, event, payload]`` (vsn 2.0.0; 1.0.0
    object frames also accepted).
  * ``phx_join`` with ``config.postgres_changes`` and ``access_token``; the reply
    is ``phx_reply`` ok with the bindings and their ids, which realtime-js
    matches binding by binding (``RealtimeChannel.js`` ``_updatePostgresBindings``).
    Then, once the subscription is live, a ``system`` message
    ``{extension: "postgres_changes", status: "ok", message: "Subscribed to
    PostgreSQL"}``: the same order as the server (``realtime_channel.ex``:
    ``join`` replies, then ``handle_info(:postgres_subscribe)`` pushes the system
    message). A change between the two is not delivered, as on the server.
  * Heartbeats on topic ``phoenix``; ``access_token`` pushes re-verify the token
    (``handle_in("access_token")``); the token is re-checked when it expires
    (``confirm_token``): an expired token gets a ``system`` error ("Token has
    expired N seconds ago") and then ``phx_close`` (``shutdown_response`` stops
    the channel with ``:normal``); realtime-js does not rejoin a closed channel.
    ``phx_leave`` is answered and drops the subscription.
  * Changes are sent as ``postgres_changes`` ``{ids, data: {schema, table,
    commit_timestamp, type, columns, record, old_record, errors}}``, only to
    subscribers who may see the row: for each change and subscriber the edge
    switches to the subscriber's role with its verified claims
    (``set local role`` + ``request.jwt.claims``) and re-reads the row by primary
    key, so the SELECT policy decides, as the server's WAL RLS check does. Columns
    the role may not select (``locked_by``) are left out. DELETE carries only
    the primary key and is not RLS-filtered (walrus). A record over 1 MB is
    sent without its values over 64 bytes and with ``errors: ["Error 413:
    Payload Too Large"]`` (walrus ``max_record_bytes``). An UPDATE's record lacks
    the columns whose value is unchanged and stored out of line (TOASTed): wal2json
    skips them (``wal2json.c`` ``pg_decode_write_tuple``) and ``apply_rls.sql`` fills a
    missing column only from the old tuple, the primary key alone under the default
    replica identity (which columns: :mod:`ai_jobs.localstack.feed`).

REST (``GET /rest/v1/ai_jobs?select=...&col=eq.value``)
  * Run under the caller's role and claims with RLS, as PostgREST does; a bad
    JWT is 401 ``PGRST301``, an expired one 401 ``PGRST303``; ``Accept:
    application/vnd.pgrst.object+json`` (``.single()``) answers one object or 406
    ``PGRST116``; ``.maybeSingle()`` asks for an array (``postgrest-js``
    ``isMaybeSingle``). CORS as Supabase's gateway (``*``, preflights answered).

Broadcast (live Claude output, status over Broadcast)
  * ``phx_join`` with ``config.private: true`` is a private channel: authorized at
    join as Realtime Authorization does (``realtime_channel.ex``
    ``maybe_assign_policies``; ``lib/realtime/tenants/authorization.ex``
    ``get_read_authorizations``: the user's role and claims, a SELECT on
    ``realtime.messages`` for ``realtime.topic()``). The embedded database has no
    ``realtime`` schema, so the edge applies the rule our migration's policy states
    (``ai_jobs_live_owner_receive``): topic ``ai-jobs-live:<job id>`` may be received by
    ``authenticated`` when that job row is visible to the user under RLS (read as
    the user, like the REST reads), by ``service_role`` (bypasses RLS), by nobody
    else. Refused: ``{"status": "error", "response": {"reason": "Unauthorized: You
    do not have permissions to read from this Channel topic: <topic>"}}``
    (``logging.ex`` ``log_error``). Re-checked on an ``access_token`` push; a lost
    permission closes the channel (``check_read_permissions_revoked``).
  * Private and public channels of the same name are separate topics
    (``tenants.ex`` ``tenant_topic``: ``<tenant>-private:<topic>`` vs ``<tenant>:<topic>``).
  * A private channel takes ``postgres_changes`` bindings like a public one (the server's
    ``postgres_cdc_subscribe`` does not look at ``private?``): the browser client follows
    a job's status and output on its one private channel.
  * ``private_only=True`` is the dashboard's "Allow public access" off: a join without
    ``config.private: true`` is refused with "PrivateOnly: This project only allows
    private channels", before the token is checked (``realtime_channel.ex`` ``join`` →
    ``only_private?``; ``logging.ex`` ``log_error`` makes the reason ``"<code>: <msg>"``).
  * Broadcast from Database: the server streams ``realtime.send``'s messages from a
    replication connection it starts asynchronously (``tenants/connect.ex``) with a
    TEMPORARY slot (``replication_connection.ex``), so a message sent before it is up is
    lost; a join with ``config.broadcast.replication_ready: true`` gets ``system``
    ``{extension: "system", status: "ok", message: "Replication connection established"}``
    once it is (``realtime_channel.ex`` ``handle_info(:notify_replication_ready)``). The
    edge's stand-in (``_database_broadcasts``, a LISTEN) is up before the edge serves, so
    the message follows the join reply at once.
  * ``POST /realtime/v1/api/broadcast`` ``{messages: [{topic, event, payload,
    private}]}`` (``broadcast_controller.ex``, ``tenants/batch_broadcast.ex``): 202;
    422 when a message lacks topic, event or an object payload; the apikey (or
    Bearer token) must be a valid JWT. A private message is delivered only when
    the caller passes the write check, i.e. ``service_role`` (no INSERT policy
    exists for anyone else): otherwise it is skipped and the answer is still 202,
    as the server does.
  * Delivered as ``[null, null, "realtime:<topic>", "broadcast", {type: "broadcast",
    event, payload}]`` to every subscriber of the topic (realtime-js
    ``RealtimeChannel.js`` ``_updateFilterMessage`` matches ``payload.event``).
  * A ``broadcast`` pushed by a client on a private channel needs the write check
    too (``broadcast_handler.ex``): browsers fail it and the message is dropped with
    no reply; on a public channel it goes to the other subscribers (to itself too
    with ``config.broadcast.self``), with an ``ok`` reply when ``ack`` is set.

Changes come from the dev-only feed in :mod:`ai_jobs.localstack.feed` (a
trigger and ``pg_notify``); the edge LISTENs on a dedicated connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import jwt
import psycopg
from aiohttp import WSMsgType, web
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from ai_jobs.http.auth import CLOCK_SKEW_SECONDS
from ai_jobs.localstack.feed import BROADCAST_CHANNEL, CHANNEL, KEEP, SCHEMA

log = logging.getLogger("ai_jobs.localstack")

TABLE = "ai_jobs"
MAX_RECORD_BYTES = 1024 * 1024  # walrus: larger records are truncated
MAX_VALUE_BYTES = 64  # walrus keeps values up to this size in a truncated record
TOO_LARGE = "Error 413: Payload Too Large"
ROLES = ("anon", "authenticated", "service_role")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_FILTER = re.compile(r"^([a-z_][a-z0-9_]*)=eq\.(.+)$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
CONFIRM_TOKEN_SECONDS = 300.0  # realtime_channel.ex @confirm_token_ms_interval
# The private Broadcast topic of a job (supabase/migrations/20261130001100_live_output.sql).
_JOB_TOPIC = re.compile(r"^ai-jobs-live:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


class TokenError(Exception):
    """A token the server refuses; ``expired`` selects PostgREST's code."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def verify_token(token: str | None, secret: str) -> dict[str, Any]:
    """Claims of an HS256 token signed with the dev secret. Realtime requires
    ``role`` and ``exp`` (``realtime_channel.ex``); the audience is not checked.
    As the API's TokenVerifier: ``exp`` with no leeway (refused from its second on),
    ``nbf``/``iat`` up to CLOCK_SKEW_SECONDS in the future."""
    if not token:
        raise TokenError("JWT is missing")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], leeway=CLOCK_SKEW_SECONDS,
                            options={"verify_aud": False, "verify_exp": False})
    except jwt.PyJWTError as exc:
        raise TokenError(f"Failed to validate JWT signature: {exc}") from None
    if not isinstance(claims, dict) or "role" not in claims or not isinstance(claims.get("exp"), int):
        raise TokenError("Fields `role` and `exp` are required in JWT")
    if claims["exp"] <= int(time.time()):
        raise TokenError(f"Token has expired {int(time.time()) - claims['exp']} seconds ago", expired=True)
    return claims


@dataclass
class Binding:
    id: int
    event: str
    schema: str
    table: str
    filter: str | None
    column: str | None = None
    value: str | None = None

    def matches(self, op: str, record: dict[str, Any] | None, old: dict[str, Any]) -> bool:
        if self.event not in ("*", op):
            return False
        if self.column is None:
            return True
        row = old if op == "DELETE" else (record or {})
        got = row.get(self.column)
        if got is None:
            return False
        # the server casts the filter value to the column's type (check_equality_op.sql):
        # a uuid matches in either case
        return _text(got) == self.value or (_UUID.match(_text(got)) is not None
                                            and _text(got).lower() == str(self.value).lower())


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(eq=False)
class Channel:
    conn: Connection
    topic: str
    join_ref: str | None
    claims: dict[str, Any]
    token: str
    bindings: list[Binding]
    live: bool = False
    timer: asyncio.TimerHandle | None = None
    private: bool = False
    broadcast_self: bool = False
    broadcast_ack: bool = False

    @property
    def name(self) -> str:
        return self.topic.removeprefix("realtime:")


@dataclass(eq=False)
class Connection:
    ws: web.WebSocketResponse
    apikey: str
    vsn: str
    channels: dict[str, Channel] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> None:
        if self.vsn.startswith("1."):
            frame: Any = {"join_ref": join_ref, "ref": ref, "topic": topic, "event": event, "payload": payload}
        else:
            frame = [join_ref, ref, topic, event, payload]
        async with self.lock:
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(frame, default=str))


class SupabaseEdge:
    """The edge on its own thread and event loop; ``start()`` returns its URL."""

    def __init__(self, database_url: str, jwt_secret: str, *, host: str = "127.0.0.1", port: int = 0,
                 subscribe_delay: float = 0.0, access_log: bool = True, private_only: bool = False) -> None:
        self.database_url = database_url
        self.jwt_secret = jwt_secret
        self.host = host
        self.port = port
        self.subscribe_delay = subscribe_delay  # seconds between the join reply and the live subscription
        self.private_only = private_only  # "Allow public access" off: joins without config.private are refused
        self.access_log = access_log
        self.url = ""
        self.rest_reads: Counter[str] = Counter()  # per filter value (the job id), for tests and figures
        self.changes_sent: Counter[str] = Counter()  # per job id
        self.broadcasts_sent: Counter[str] = Counter()  # deliveries per topic (one per subscriber)
        self.broadcast_api_messages: Counter[str] = Counter()  # messages POSTed per topic
        self.broadcast_delivered_at: list[tuple[float, str, dict[str, Any]]] = []  # (monotonic, topic, payload)
        self._connections: set[Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._pool: AsyncConnectionPool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._last_change = 0
        self._last_broadcast = 0
        self._fan_lock: asyncio.Lock

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 30) -> str:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="ai-jobs-supabase-edge", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("the local Supabase edge did not start")
        if failure:
            raise failure[0]
        return self.url

    async def _start(self) -> None:
        self._fan_lock = asyncio.Lock()
        self._pool = AsyncConnectionPool(self.database_url, min_size=1, max_size=4, open=False,
                                         kwargs={"autocommit": False})
        await self._pool.open(wait=True, timeout=15)
        app = web.Application(middlewares=[self._cors])
        app.router.add_get("/realtime/v1/websocket", self._websocket)
        app.router.add_post("/realtime/v1/api/broadcast", self._api_broadcast)
        app.router.add_route("*", "/rest/v1/{table}", self._rest)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{self.host}:{port}"
        listening = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(listening))
        await asyncio.wait_for(listening.wait(), 15)

    def stop(self, timeout: float = 5) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            return

        async def shutdown() -> None:
            if self._listener:
                self._listener.cancel()
            for conn in list(self._connections):
                await conn.ws.close()
            if self._runner:
                await self._runner.cleanup()
            if self._pool:
                await self._pool.close(timeout=2)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout)
        except Exception:  # noqa: BLE001 - stopping anyway
            log.warning("local Supabase edge: unclean stop", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(timeout)

    def _log(self, line: str) -> None:
        if self.access_log:
            print(f"edge {line}", file=sys.stderr, flush=True)

    # -- CORS (Supabase's gateway answers any origin) --------------------------------------

    @web.middleware
    async def _cors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=200)
            asked = request.headers.get("Access-Control-Request-Headers")
            response.headers["Access-Control-Allow-Headers"] = asked or "authorization, apikey, x-client-info, content-type"
            response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PATCH, DELETE, OPTIONS"
            response.headers["Access-Control-Max-Age"] = "3600"
        else:
            response = await handler(request)
        if not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = "*"
            response.headers["Access-Control-Expose-Headers"] = "Content-Range, Content-Profile"
        return response

    # -- REST --------------------------------------------------------------------------------

    @staticmethod
    def _pgrst(status: int, code: str, message: str, details: str | None = None) -> web.Response:
        return web.json_response({"code": code, "details": details, "hint": None, "message": message}, status=status)

    async def _rest(self, request: web.Request) -> web.Response:
        response = await self._rest_inner(request)
        from ai_jobs.http.server import loggable_path

        self._log(f'"{request.method} {loggable_path(request.path_qs)}" {response.status}')
        return response

    async def _rest_inner(self, request: web.Request) -> web.Response:
        table = request.match_info["table"]
        if request.method not in ("GET", "HEAD"):
            return self._pgrst(405, "PGRST117", "the local edge only reads (GET)")
        if table != TABLE:
            return self._pgrst(404, "PGRST205", f"Could not find the table 'public.{table}' in the schema cache")
        bearer = request.headers.get("Authorization", "")
        token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else request.headers.get("apikey")
        try:
            claims = verify_token(token, self.jwt_secret)
        except TokenError as exc:
            return self._pgrst(401, "PGRST303" if exc.expired else "PGRST301",
                               "JWT expired" if exc.expired else str(exc))
        role = claims.get("role")
        if role not in ROLES:
            return self._pgrst(401, "PGRST301", f"role {role!r} is not allowed here")
        select = request.query.get("select", "*")
        names = [part.strip() for part in select.split(",") if part.strip()]
        if select.strip() != "*" and (not names or not all(_IDENT.match(n) for n in names)):
            return self._pgrst(400, "PGRST100", f"failed to parse select parameter ({select})")
        filters: list[tuple[str, str]] = []
        for key, value in request.query.items():
            if key in ("select", "limit", "offset", "order"):
                continue
            if not _IDENT.match(key) or not value.startswith("eq."):
                return self._pgrst(400, "PGRST100", f"the local edge supports only col=eq.value filters ({key})")
            filters.append((key, value[3:]))
        for _, value in filters:
            self.rest_reads[value] += 1
        columns = sql.SQL("*") if select.strip() == "*" else sql.SQL(", ").join(sql.Identifier(n) for n in names)
        where = sql.SQL(" and ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k, _ in filters) \
            if filters else sql.SQL("true")
        query = sql.SQL("select coalesce(jsonb_agg(to_jsonb(x)), '[]'::jsonb) from "
                        "(select {} from public.ai_jobs where {}) x").format(columns, where)
        assert self._pool is not None
        try:
            async with self._pool.connection() as conn:
                async with conn.transaction():
                    await _act_as(conn, claims, method=request.method, path=f"/{table}")
                    cur = await conn.execute(query, [v for _, v in filters])
                    row = await cur.fetchone()
        except psycopg.errors.InsufficientPrivilege as exc:
            return self._pgrst(401 if role == "anon" else 403, "42501", str(exc).splitlines()[0])
        except (psycopg.errors.DataError, psycopg.errors.UndefinedColumn) as exc:
            return self._pgrst(400, exc.sqlstate or "22P02", str(exc).splitlines()[0])
        rows = row[0] if row else []
        headers = {"Content-Range": f"0-{max(len(rows) - 1, 0)}/*" if rows else "*/*"}
        if "application/vnd.pgrst.object+json" in request.headers.get("Accept", ""):
            if len(rows) != 1:
                return self._pgrst(406, "PGRST116", "JSON object requested, multiple (or no) rows returned",
                                   f"The result contains {len(rows)} rows")
            return web.json_response(rows[0], headers=headers)
        return web.json_response(rows, headers=headers)

    # -- Realtime ----------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        apikey = request.query.get("apikey") or request.headers.get("apikey") or ""
        try:
            verify_token(apikey, self.jwt_secret)
        except TokenError as exc:
            self._log(f'"GET /realtime/v1/websocket" 403 ({exc})')
            return web.Response(status=403, text=f"apikey refused: {exc}")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        conn = Connection(ws, apikey, request.query.get("vsn", "1.0.0"))
        self._connections.add(conn)
        self._log('"GET /realtime/v1/websocket" 101')
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    await self._on_frame(conn, msg.data)
                except (ValueError, TypeError, KeyError) as exc:
                    log.info("local Realtime: ignored a malformed frame: %s", exc)
        finally:
            self._connections.discard(conn)
            for channel in list(conn.channels.values()):
                self._drop(channel)
        return ws

    async def _on_frame(self, conn: Connection, data: str) -> None:
        frame = json.loads(data)
        if isinstance(frame, list):
            join_ref, ref, topic, event, payload = frame
        else:
            join_ref, ref, topic, event, payload = (frame.get("join_ref"), frame.get("ref"), frame["topic"],
                                                    frame["event"], frame.get("payload"))
        payload = payload if isinstance(payload, dict) else {}
        if topic == "phoenix" and event == "heartbeat":
            await conn.send(None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}})
            return
        if event == "phx_join":
            await self._join(conn, join_ref, ref, topic, payload)
            return
        channel = conn.channels.get(topic)
        if channel is None or channel.join_ref != join_ref:
            await conn.send(join_ref, ref, topic, "phx_reply", {"status": "error", "response": {"reason": "unmatched topic"}})
            return
        if event == "phx_leave":
            self._drop(channel)
            await conn.send(join_ref, ref, topic, "phx_reply", {"status": "ok", "response": {}})
        elif event == "access_token":
            await self._refresh_token(channel, payload.get("access_token"))
        elif event == "broadcast":
            await self._client_broadcast(channel, ref, payload)
        # presence and anything else: not served by this edge (ignored, as unknown events are)

    async def _join(self, conn: Connection, join_ref: str | None, ref: str | None, topic: str,
                    payload: dict[str, Any]) -> None:
        async def refuse(reason: str) -> None:
            await conn.send(join_ref, ref, topic, "phx_reply", {"status": "error", "response": {"reason": reason}})

        if not isinstance(topic, str) or not topic.startswith("realtime:") or topic == "realtime:":
            await refuse("TopicNameRequired: You must provide a topic name")
            return
        config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
        private = config.get("private") is True
        if self.private_only and not private:  # realtime_channel.ex only_private?, before the token
            await refuse("PrivateOnly: This project only allows private channels")
            return
        token = payload.get("access_token") or payload.get("user_token") or conn.apikey
        try:
            claims = verify_token(token, self.jwt_secret)
        except TokenError as exc:
            await refuse(f"{'InvalidJWTToken' if exc.expired else 'JwtSignatureError'}: {exc}")
            return
        if private and not await self._may_receive(claims, topic.removeprefix("realtime:")):
            await refuse("Unauthorized: You do not have permissions to read from this Channel topic: "
                         f"{topic.removeprefix('realtime:')}")
            self._log(f"join {topic} (private) refused for {claims.get('sub') or claims.get('role')}")
            return
        broadcast = config.get("broadcast") if isinstance(config.get("broadcast"), dict) else {}
        wanted = config.get("postgres_changes") or []
        bindings: list[Binding] = []
        for params in wanted if isinstance(wanted, list) else []:
            if not isinstance(params, dict):
                continue
            ident = zlib.crc32(json.dumps(params, sort_keys=True).encode()) & 0x7FFFFFF
            filt = params.get("filter")
            binding = Binding(ident, str(params.get("event", "*")).upper(), str(params.get("schema", "")),
                              str(params.get("table", "")), filt if isinstance(filt, str) and filt else None)
            if binding.filter:
                found = _FILTER.match(binding.filter)
                if found:
                    binding.column, binding.value = found.group(1), found.group(2)
            bindings.append(binding)
        old = conn.channels.get(topic)
        if old is not None:  # a second join on a topic replaces the first (Phoenix closes the old one)
            self._drop(old)
            await conn.send(old.join_ref, old.join_ref, topic, "phx_close", {})
        channel = Channel(conn, topic, join_ref, claims, token, bindings, private=private,
                          broadcast_self=broadcast.get("self") is True, broadcast_ack=broadcast.get("ack") is True)
        conn.channels[topic] = channel
        response = {"postgres_changes": [{**params, "id": b.id} for params, b in
                                         zip([p for p in wanted if isinstance(p, dict)], bindings)]}
        await conn.send(join_ref, ref, topic, "phx_reply", {"status": "ok", "response": response})
        self._log(f"join {topic}{' (private)' if private else ''} as {claims.get('sub') or claims.get('role')}")
        self._schedule_confirm(channel)
        if bindings:
            asyncio.create_task(self._postgres_subscribe(channel))
        if broadcast.get("replication_ready") is True:
            # realtime_channel.ex handle_info(:notify_replication_ready): pushed after the join
            # reply once the replication connection is up; the edge's (its LISTEN) is up from start
            asyncio.create_task(self._system(channel, "system", "ok", "Replication connection established"))

    async def _postgres_subscribe(self, channel: Channel) -> None:
        """After the join reply, as the server's ``handle_info(:postgres_subscribe)``."""
        if self.subscribe_delay:
            await asyncio.sleep(self.subscribe_delay)
        if channel.conn.channels.get(channel.topic) is not channel:
            return
        bad = [b for b in channel.bindings if b.schema != "public" or b.table != TABLE
               or (b.filter is not None and b.column is None) or b.event not in ("*", "INSERT", "UPDATE", "DELETE")]
        if bad:
            b = bad[0]
            message = ("Unable to subscribe to changes with given parameters. Please check Realtime is enabled "
                       f"for the given connect parameters: [event: {b.event}, schema: {b.schema}, table: {b.table}, "
                       f"filters: [{b.filter or ''}]] (the local edge serves public.{TABLE} with col=eq.value filters)")
            await self._system(channel, "postgres_changes", "error", message)
            return
        async with self._fan_lock:  # what committed before this point is not for this subscriber
            await self._fan_out_locked()
            channel.live = True
        await self._system(channel, "postgres_changes", "ok", "Subscribed to PostgreSQL")

    async def _system(self, channel: Channel, extension: str, status: str, message: str) -> None:
        await channel.conn.send(channel.join_ref, None, channel.topic, "system",
                                {"extension": extension, "status": status, "message": message, "channel": channel.name})

    def _schedule_confirm(self, channel: Channel) -> None:
        if channel.timer:
            channel.timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, min(CONFIRM_TOKEN_SECONDS, channel.claims["exp"] - time.time()))
        channel.timer = loop.call_later(delay, lambda: asyncio.ensure_future(self._confirm(channel)))

    async def _confirm(self, channel: Channel) -> None:
        if channel.conn.channels.get(channel.topic) is not channel:
            return
        try:
            channel.claims = verify_token(channel.token, self.jwt_secret)
        except TokenError as exc:
            await self._shutdown(channel, str(exc))
            return
        self._schedule_confirm(channel)

    async def _refresh_token(self, channel: Channel, token: Any) -> None:
        if not isinstance(token, str) or not token or token == channel.token:
            return
        channel.token = token
        try:
            channel.claims = verify_token(token, self.jwt_secret)
        except TokenError as exc:
            await self._shutdown(channel, str(exc))
            return
        self._schedule_confirm(channel)
        if channel.private and not await self._may_receive(channel.claims, channel.name):
            # realtime_channel.ex check_read_permissions_revoked
            await self._shutdown(channel, "You do not have permissions to read from this Channel topic: "
                                 f"{channel.name}")
            return
        if channel.bindings:  # re-subscribed with the new claims; the server says so again
            asyncio.create_task(self._postgres_subscribe(channel))

    async def _shutdown(self, channel: Channel, message: str) -> None:
        """``shutdown_response``: a system error, then the channel stops (phx_close)."""
        self._drop(channel)
        self._log(f"close {channel.topic}: {message}")
        await self._system(channel, "system", "error", message)
        await channel.conn.send(channel.join_ref, channel.join_ref, channel.topic, "phx_close", {})

    def _drop(self, channel: Channel) -> None:
        channel.live = False
        if channel.timer:
            channel.timer.cancel()
        if channel.conn.channels.get(channel.topic) is channel:
            del channel.conn.channels[channel.topic]

    # -- Broadcast -------------------------------------------------------------------------

    async def _may_receive(self, claims: dict[str, Any], name: str) -> bool:
        """Realtime Authorization's read check for a private topic, as our policy on
        realtime.messages states it: the job's owner (row visible under RLS), or the
        service role (bypasses RLS). Anything else is refused."""
        role = claims.get("role")
        if role == "service_role":
            return True
        found = _JOB_TOPIC.match(name)
        if role != "authenticated" or found is None:
            return False
        return await self._visible(claims, found.group(1))

    async def _client_broadcast(self, channel: Channel, ref: str | None, payload: dict[str, Any]) -> None:
        """A broadcast pushed by a client (``broadcast_handler.ex``): a private channel
        needs the write check, which only the service role passes here; a refused
        message is dropped without a reply, as the server does."""
        if channel.private and channel.claims.get("role") != "service_role":
            self._log(f"broadcast on {channel.topic} dropped: {channel.claims.get('sub') or channel.claims.get('role')} "
                      "may not send on a private topic")
            return
        event = payload.get("event")
        if isinstance(event, str):
            await self._deliver(channel.name, channel.private, event, payload.get("payload"),
                                exclude=None if channel.broadcast_self else channel)
        if channel.broadcast_ack:
            await channel.conn.send(channel.join_ref, ref, channel.topic, "phx_reply", {"status": "ok", "response": {}})

    async def _deliver(self, name: str, private: bool, event: str, payload: Any, *,
                       exclude: Channel | None = None) -> int:
        body = {"type": "broadcast", "event": event, "payload": payload}
        sent = 0
        for conn in list(self._connections):
            for channel in list(conn.channels.values()):
                if channel is exclude or channel.private != private or channel.name != name:
                    continue
                await conn.send(None, None, channel.topic, "broadcast", body)
                sent += 1
        if sent:
            self.broadcasts_sent[name] += sent
            self.broadcast_delivered_at.append((time.monotonic(), name, payload if isinstance(payload, dict) else {}))
            del self.broadcast_delivered_at[:-10000]
        return sent

    async def _api_broadcast(self, request: web.Request) -> web.Response:
        """``POST /realtime/v1/api/broadcast`` (``broadcast_controller.ex``)."""
        bearer = request.headers.get("Authorization", "")
        token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else request.headers.get("apikey")
        try:
            claims = verify_token(token, self.jwt_secret)
        except TokenError as exc:
            self._log(f'"POST /realtime/v1/api/broadcast" 401 ({exc})')
            return web.json_response({"message": str(exc)}, status=401)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"errors": {"messages": ["invalid JSON"]}}, status=422)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return web.json_response({"errors": {"messages": ["can't be blank"]}}, status=422)
        for message in messages:
            if not (isinstance(message, dict) and isinstance(message.get("topic"), str) and message["topic"]
                    and isinstance(message.get("event"), str) and message["event"]
                    and isinstance(message.get("payload"), dict)):
                return web.json_response({"errors": {"messages": [{"topic": ["can't be blank"], "event": ["can't be blank"],
                                                                   "payload": ["must be an object"]}]}}, status=422)
        writer = claims.get("role") == "service_role"  # the write check: no INSERT policy for anyone else
        for message in messages:
            private = message.get("private") is True
            self.broadcast_api_messages[message["topic"]] += 1
            if private and not writer:
                continue
            await self._deliver(message["topic"], private, message["event"], message["payload"])
        return web.Response(status=202)

    # -- the change feed ---------------------------------------------------------------------

    async def _listen(self, listening: asyncio.Event) -> None:
        """Wake on each NOTIFY and fan the new changes out; no polling."""
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
            await conn.execute(f"listen {CHANNEL}")
            await conn.execute(f"listen {BROADCAST_CHANNEL}")
            row = await (await conn.execute(f"select coalesce(max(id), 0) from {SCHEMA}.changes")).fetchone()
            self._last_change = int(row[0]) if row else 0
            row = await (await conn.execute(
                f"select coalesce(max(id), 0) from {SCHEMA}.broadcasts")).fetchone()
            self._last_broadcast = int(row[0]) if row else 0
            listening.set()
            async for notice in conn.notifies():
                try:
                    if notice.channel == BROADCAST_CHANNEL:
                        await self._database_broadcasts()
                    else:
                        await self._fan_out()
                except Exception:  # noqa: BLE001 - keep listening
                    log.exception("local Realtime: could not deliver changes")

    async def _database_broadcasts(self) -> None:
        """Broadcast from Database: what realtime.send queued (the dev stand-in in
        feed.py), delivered on its topic like the server's replication of
        realtime.messages (the sender is the database: no write check)."""
        assert self._pool is not None
        async with self._pool.connection() as conn:
            conn.row_factory = tuple_row  # type: ignore[assignment]
            cur = await conn.execute(
                f"select id, topic, event, payload, private from {SCHEMA}.broadcasts where id > %s order by id",
                (self._last_broadcast,))
            rows = await cur.fetchall()
            await conn.execute(f"delete from {SCHEMA}.broadcasts where sent_at < now() - interval '{KEEP}'")
            await conn.commit()
        for ident, topic, event, payload, private in rows:
            self._last_broadcast = max(self._last_broadcast, int(ident))
            await self._deliver(str(topic), bool(private), str(event), payload)

    async def _fan_out(self) -> None:
        async with self._fan_lock:
            await self._fan_out_locked()

    async def _fan_out_locked(self) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn:
            conn.row_factory = tuple_row  # type: ignore[assignment]
            cur = await conn.execute(
                f"select id, op, record, old_pk, committed_at, unchanged_toast from {SCHEMA}.changes "
                "where id > %s order by id",
                (self._last_change,))
            changes = await cur.fetchall()
            await conn.execute(f"delete from {SCHEMA}.changes where committed_at < now() - interval '{KEEP}'")
            await conn.commit()
        if not changes:
            return
        self._last_change = max(c[0] for c in changes)
        columns_by_role: dict[str, list[tuple[str, str]]] = {}
        for _, op, record, old_pk, committed_at, unchanged_toast in changes:
            channels = [c for conn in self._connections for c in conn.channels.values() if c.live]
            for channel in channels:
                ids = [b.id for b in channel.bindings if b.matches(op, record, old_pk)]
                if not ids:
                    continue
                role = str(channel.claims.get("role"))
                if role not in ROLES:
                    continue
                if op != "DELETE" and not await self._visible(channel.claims, old_pk["id"]):
                    continue
                if role not in columns_by_role:
                    columns_by_role[role] = await self._columns(role)
                data = _payload(op, record, old_pk, committed_at, columns_by_role[role], unchanged_toast or ())
                await channel.conn.send(None, None, channel.topic, "postgres_changes", {"ids": ids, "data": data})
                self.changes_sent[str(old_pk["id"])] += 1

    async def _visible(self, claims: dict[str, Any], pk: Any) -> bool:
        """The subscriber's SELECT policy decides, read as that user."""
        assert self._pool is not None
        async with self._pool.connection() as conn:
            async with conn.transaction():
                await _act_as(conn, claims, method="GET", path=f"/{TABLE}")
                try:
                    cur = await conn.execute("select exists (select 1 from public.ai_jobs where id = %s)", (pk,))
                except psycopg.errors.InsufficientPrivilege:
                    return False
                row = await cur.fetchone()
        return bool(row and row[0])

    async def _columns(self, role: str) -> list[tuple[str, str]]:
        assert self._pool is not None
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "select a.attname::text, t.typname::text from pg_attribute a join pg_type t on t.oid = a.atttypid "
                "where a.attrelid = 'public.ai_jobs'::regclass and a.attnum > 0 and not a.attisdropped "
                "and has_column_privilege(%s, a.attrelid, a.attnum, 'SELECT') order by a.attnum", (role,))
            rows = await cur.fetchall()
            await conn.commit()
        return [(str(r[0]), str(r[1])) for r in rows]


async def _act_as(conn: psycopg.AsyncConnection[Any], claims: dict[str, Any], *, method: str, path: str) -> None:
    """As PostgREST and Realtime's RLS check: the token's role and claims, local to the transaction."""
    await conn.execute(
        "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true),"
        " set_config('request.method', %s, true), set_config('request.path', %s, true)",
        (claims.get("role", "anon"), json.dumps(claims), method, path),
    )


def _payload(op: str, record: dict[str, Any] | None, old_pk: dict[str, Any], committed_at: Any,
             columns: list[tuple[str, str]], unchanged_toast: Any = ()) -> dict[str, Any]:
    allowed = {name for name, _ in columns}
    # wal2json leaves unchanged TOASTed values out of the new tuple; apply_rls.sql takes a
    # missing column from old_columns, which hold only the primary key here (feed.py)
    record = {k: v for k, v in (record or {}).items() if k not in set(unchanged_toast)}
    errors: list[str] | None = None
    data: dict[str, Any] = {
        "schema": "public", "table": TABLE,
        # apply_rls: to_char(... 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
        "commit_timestamp": committed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{committed_at.microsecond // 1000:03d}Z",
        "type": op, "columns": [{"name": n, "type": t} for n, t in columns],
    }
    if op != "DELETE":
        row = {k: v for k, v in record.items() if k in allowed}
        # apply_rls measures the whole WAL record, then keeps values of at most 64 bytes
        if len(json.dumps(record).encode()) > MAX_RECORD_BYTES:
            row = {k: v for k, v in row.items() if len(json.dumps(v, ensure_ascii=False).encode()) <= MAX_VALUE_BYTES}
            errors = [TOO_LARGE]
        data["record"] = row
    if op != "INSERT":
        data["old_record"] = dict(old_pk)
    data["errors"] = errors
    return data
