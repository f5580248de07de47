"""The project's Realtime + PostgREST test server: a loopback stand-in for
Supabase's hosted edge that behaves as the real one does where our browser
client can go wrong. Every behaviour below is modelled on the named sources
(realtime-js 2.119.1 in tests/browser/js/node_modules/@supabase; the server is
github.com/supabase/realtime):

Realtime (Phoenix websocket, vsn 2.0.0 JSON array frames; `phoenix` heartbeats):
- phx_join with `config.postgres_changes` and `access_token` → phx_reply ok with the
  bindings echoed back with server ids (realtime-js RealtimeChannel.ts
  `_updatePostgresBindings` matches them; server realtime_channel.ex `join/3`).
- `private_only` (the dashboard's "Allow public access" off): a join without
  `config.private: true` is refused with "PrivateOnly: This project only allows private
  channels", before the token is looked at (realtime_channel.ex `join/3` → `only_private?`;
  the reason is `"<code>: <message>"`, realtime_channel/logging.ex `log_error`).
- A private join is authorized by the SELECT policies on realtime.messages as the user
  (realtime_channel.ex `maybe_assign_policies`, tenants/authorization.ex
  `get_read_authorizations`); the fake applies what our policy (migration
  20261130001100_live_output.sql, `ai_jobs_live_owner_receive`) states: topic
  `ai-jobs-live:<lower-case uuid>` for `authenticated` when that job is the user's (read
  as the user under RLS), any topic for `service_role`. Refused: "Unauthorized: You do
  not have permissions to read from this Channel topic: <topic>". postgres_changes work
  on a private channel as on a public one (`postgres_cdc_subscribe` ignores `private?`).
- The join reply comes BEFORE the Postgres subscription is live; the server then
  pushes `system` {extension: "postgres_changes", status: "ok", message: "Subscribed
  to PostgreSQL"} (realtime_channel.ex `handle_info(:postgres_subscribe, …)`;
  realtime-js RealtimeChannel.ts `postgres_changes_options` docs). Changes committed in
  between are never delivered. `join_delay`, `system_gap` and `hold_system` control it.
- A filter `id=eq.<uuid>` matches in either case: the server casts the value to the
  column's type (check_equality_op.sql, from is_visible_through_filters.sql).
- postgres_changes messages carry `ids` of the matching bindings and `data` {schema,
  table, commit_timestamp, type, record, old_record, columns, errors}
  (RealtimeChannel.ts `_updateFilterTransform`, `_getPayloadRecords`).
- INSERT/UPDATE are sent only to subscribers whose filter matches and whose JWT may
  SELECT the row under RLS, checked as that role with its claims in the real database
  (apply_rls.sql: `walrus_rls_stmt` under `set_config('role'…)`, `request.jwt.claims`).
- DELETE is not RLS-filtered and carries only the primary key in old_record
  (apply_rls.sql: `if not is_rls_enabled or action = 'DELETE'`, "if RLS enabled, we
  can't secure deletes so filter to pkey"); here it goes to every ai_jobs subscriber.
- A row over 1 MB (`max_record_bytes`) arrives with only the values of 64 bytes or
  less and errors ["Error 413: Payload Too Large"] (apply_rls.sql
  `error_record_exceeds_max_size`).
- An UPDATE arrives without the values that are unchanged and stored out of line
  (TOASTed), with no error: wal2json skips them (wal2json.c `pg_decode_write_tuple`,
  "don't send unchanged TOAST Datum") and apply_rls.sql takes a missing column only
  from old_columns, the primary key alone under the default replica identity. As in
  ai_jobs.localstack.feed: a value equal to the one in the previous event (or in the
  row when the channel joined) whose stored, compressed size in the table is over
  `toast_inline_max` (2000 bytes: heaptoast.c moves such a value out of line for
  certain). `unchanged_toast` lists what was left out.
- A join with an expired token is refused ("InvalidJWTToken: Token has expired N seconds
  ago"); when a joined channel's token expires the
  server pushes `system` {extension: "system", status: "error", message: "Token has
  expired N seconds ago"} then `phx_close` (realtime_channel.ex `handle_info(:confirm_token…)`,
  `shutdown_response/2`; channels_authorization.ex for the message). realtime-js
  does not rejoin a closed channel (@supabase/phoenix channel.js `onClose`,
  RealtimeChannel.ts constructor: `_onClose` → `socket._remove`).
- `access_token` pushes replace the channel's token (and its expiry); an expired
  one shuts the channel down the same way (realtime_channel.ex
  `handle_in("access_token", …)`; realtime-js RealtimeClient.ts `_performAuth`).
- Broadcast from Database (`db_status`: what the opt-in trigger
  `ai_jobs_status_broadcast_send_v1` sends with `realtime.send`, migration
  20261130001100_live_output.sql) is streamed from the tenant's replication connection,
  which the server starts asynchronously when the tenant connects (the first join:
  tenants/connect.ex `handle_continue(:start_replication)` → `async_start_replication_connection`)
  and which creates a TEMPORARY slot when it starts (replication_connection.ex
  `CREATE_REPLICATION_SLOT … TEMPORARY LOGICAL`): a message inserted before it is up is
  never delivered (`lost_broadcasts`). `replication_delay` and `hold_replication` control
  when it is up. Delivered as `broadcast` {type, event, payload, meta: {id}}
  (socket/user_broadcast.ex) to the joined private channels of the topic.
- A join with `config.broadcast.replication_ready: true` gets, once that connection is
  up, `system` {extension: "system", status: "ok", message: "Replication connection
  established"}; not up within `replication_ready_timeout` (the server's 1 minute), the
  channel is shut down with "Replication connection was not established in time"
  (realtime_channel.ex `handle_info(:notify_replication_ready, …)`; realtime-js
  RealtimeChannel.ts `RealtimeChannelOptions.config.broadcast.replication_ready`).
  `notify_replication = False` plays a server without the opt-in (no message).
- `phx_error` from the server makes realtime-js rejoin by itself (phoenix channel.js
  `onError` → `rejoinTimer`); `reject_joins` refuses the next joins.

REST (PostgREST): GET /rest/v1/ai_jobs?select=…&id=eq.<uuid> runs against the test
database as the JWT's role with its claims (tests/rls.py), so RLS decides; an
expired or bad JWT gets 401 PGRST303/PGRST301. `read_failures` queues failures for
the next reads: "500", "503", "504" (PGRST003, pool timeout), "drop" (connection
closed without a response), "slow:<seconds>". postgrest-js retries 503/520 and
network errors itself (fetchWithRetry.ts), so tests prefer 500/504 to see ours.

Also GET /api/jobs/<id> (the ai-jobs API read, for polling comparisons) and static
files: the harness page, the client under test (AI_JOBS_CLIENT_DIR overrides
public/, to run the same tests against another copy) and supabase-js's UMD build.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import psycopg
from aiohttp import WSMsgType, web
from psycopg import sql

from ai_jobs.http.schemas import Job as ApiJob

from tests.conftest import JWT_SECRET
from tests.rls import act_as

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SUPABASE_UMD = HERE / "js" / "node_modules" / "@supabase" / "supabase-js" / "dist" / "umd" / "supabase.js"

COLUMN_TYPES = {
    "id": "uuid", "user_id": "uuid", "parent_id": "uuid", "priority": "int4", "progress": "int2",
    "attempts": "int4", "max_attempts": "int4", "input": "jsonb", "result": "jsonb", "error": "jsonb",
    "checkpoints": "jsonb", "metadata": "jsonb", "usage": "jsonb",
}
API_COLUMNS = ",".join(ApiJob.model_fields)
# The private topic our policy on realtime.messages names (a lower-case uuid: `~` is case-sensitive)
LIVE_TOPIC = re.compile(r"^ai-jobs-live:([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def client_dir() -> Path:
    """Where /ai-jobs.js and /ai-jobs-react.js come from (AI_JOBS_CLIENT_DIR: another copy)."""
    return Path(os.environ.get("AI_JOBS_CLIENT_DIR") or REPO / "public")


@dataclass
class Channel:
    ws: web.WebSocketResponse
    topic: str
    join_ref: str
    bindings: list[tuple[int, dict[str, Any]]]
    claims: dict[str, Any]
    private: bool = False
    live: bool = False
    expiry: asyncio.Task[None] | None = None
    job_ids: set[str] = field(default_factory=set)


class FakeSupabase:
    def __init__(self, database_url: str, store: Any = None) -> None:
        self.database_url = database_url
        self.store = store  # a PostgresStore: POST /api/jobs/<id>/cancel runs the real request_cancel
        self.api_tokens: list[str] = []
        self.cancel_delay = 0.0  # seconds the cancel answer waits after the cancel is done
        self.joins: list[dict[str, Any]] = []
        self.leaves: list[str] = []
        self.closes: list[str] = []  # topics the server shut down
        self.access_tokens: list[str] = []
        self.rest_reads: Counter[str] = Counter()
        self.rest_tokens: list[str] = []
        self.rest_failures_served: list[str] = []
        self.api_reads: Counter[str] = Counter()
        self.delivered: list[tuple[str, str, str]] = []  # (topic, type, record id)
        self.dropped: list[tuple[str, str]] = []  # (topic, type): changes before the channel was live
        self.reject_joins = 0
        self.private_only = False  # "Allow public access" off: non-private joins are refused
        self.join_delay = 0.0
        self.system_gap = 0.05  # seconds from the join reply to "Subscribed to PostgreSQL"
        self.max_record_bytes = 1024 * 1024
        self.toast_inline_max = 2000  # maxDataLen of an ai_jobs row (ai_jobs.localstack.feed.TOAST_INLINE_MAX)
        self.unchanged_toast: list[tuple[str, list[str]]] = []  # (job id, columns left out of an UPDATE)
        self._seen: dict[str, dict[str, Any]] = {}  # per job: the row as of the last event (the "old" row)
        self.read_failures: list[str] = []
        self.hold_joins = threading.Event()  # set = hold join replies until release_joins()
        self.hold_system = threading.Event()  # set = hold "Subscribed to PostgreSQL" until release_system()
        self._release = threading.Event()
        self._release_system = threading.Event()
        self.replication_delay = 0.05  # seconds from the first join to the replication connection being up
        self.hold_replication = threading.Event()  # set = the replication connection is not up until release_replication()
        self._release_replication = threading.Event()
        self._replication: asyncio.Task[None] | None = None
        self.replication_up = False
        self.replication_ready_timeout = 60.0  # config.exs replication_ready_timeout
        self.notify_replication = True
        self.lost_broadcasts: list[tuple[str, dict[str, Any]]] = []  # (topic, payload) sent before the connection was up
        self.broadcasts: list[tuple[str, str, dict[str, Any]]] = []  # (topic, event, payload) delivered
        self._channels: dict[str, Channel] = {}
        self._pages: dict[str, tuple[str, str]] = {}
        self._open: set[web.WebSocketResponse] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> str:
        ready = threading.Event()
        public = client_dir()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/realtime/v1/websocket", self._websocket)
            app.router.add_get("/rest/v1/ai_jobs", self._rest_read)
            app.router.add_get("/api/jobs/{job_id}", self._api_read)
            app.router.add_post("/api/jobs/{job_id}/cancel", self._api_cancel)
            app.router.add_get("/pages/{name}", self._page)
            for path, file in (("/", HERE / "realtime_harness.html"), ("/ai-jobs.js", public / "ai-jobs.js"),
                               ("/ai-jobs-react.js", public / "ai-jobs-react.js"), ("/supabase.js", SUPABASE_UMD)):
                app.router.add_get(path, self._static(file))
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, daemon=True, name="fake-supabase").start()
        ready.wait(10)
        return self.url

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            for ws in list(self._open):
                await ws.close()
            await self._runner.cleanup()  # type: ignore[union-attr]
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:  # held joins, system messages and expiry timers
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)

    @staticmethod
    def _static(file: Path) -> Any:
        async def handler(request: web.Request) -> web.FileResponse:
            return web.FileResponse(file, headers={"cache-control": "no-store"})

        return handler

    # -- test controls -----------------------------------------------------------------

    def serve(self, name: str, body: str, content_type: str) -> str:
        """Serve a test page or bundle from this origin (a page Playwright fulfils itself
        is refused websocket access to 127.0.0.1 by Chromium's local network checks)."""
        self._pages[name] = (body, content_type)
        return f"{self.url}/pages/{name}"

    async def _page(self, request: web.Request) -> web.Response:
        body, content_type = self._pages[request.match_info["name"]]
        return web.Response(text=body, content_type=content_type)

    def release_joins(self) -> None:
        self.hold_joins.clear()
        self._release.set()

    def release_system(self) -> None:
        self.hold_system.clear()
        self._release_system.set()

    def release_replication(self) -> None:
        self.hold_replication.clear()
        self._release_replication.set()

    def db_status(self, job_id: str, op: str = "UPDATE") -> int:
        """What ai_jobs_status_broadcast_send_v1 sends for a change of the row (realtime.send of
        event "status" on the private topic ai-jobs-live:<id>); the number of channels reached."""
        if op == "DELETE":
            payload: dict[str, Any] = {"op": "DELETE", "id": job_id}
        else:
            row = self.row(job_id)
            payload = {"op": op, **{k: row.get(k) for k in (
                "id", "status", "progress", "progress_message", "attempts", "cancel_requested_at", "wait_reason",
                "updated_at", "finished_at")}}
        return self._call(self._database_broadcast(f"ai-jobs-live:{job_id}", "status", payload))

    def broadcast(self, job_id: str, event: str, payload: dict[str, Any]) -> int:
        """A message on the job's private topic, delivered as Broadcast from Database is; the
        number of channels reached."""
        return self._call(self._database_broadcast(f"ai-jobs-live:{job_id}", event, payload))

    def channels_for(self, job_id: str) -> list[str]:
        return [topic for topic, ch in self._channels.items() if job_id in ch.job_ids]

    def live_channels(self, job_id: str) -> list[str]:
        return [topic for topic, ch in self._channels.items() if job_id in ch.job_ids and ch.live]

    def row(self, job_id: str) -> dict[str, Any]:
        """The row as Realtime sends it (JSON values, timestamps as text; columns the
        subscriber's role may not select, i.e. locked_by, left out)."""
        with psycopg.connect(self.database_url) as conn:
            return conn.execute("select to_jsonb(j) - 'locked_by' from public.ai_jobs j where id = %s",
                                (job_id,)).fetchone()[0]

    def push_change(self, job_id: str, record: dict[str, Any] | None = None, kind: str = "UPDATE") -> int:
        """Send a change as Realtime would (filters, RLS, DELETE, truncation); the number of channels reached."""
        if record is None and kind != "DELETE":
            record = self.row(job_id)
        if kind == "UPDATE" and record:
            left_out = self._unchanged_toasted(job_id, record)
            if left_out:
                self.unchanged_toast.append((job_id, left_out))
                record = {k: v for k, v in record.items() if k not in left_out}
        elif kind == "INSERT" and record:
            self._seen[job_id] = record
        return self._call(self._send_change(job_id, record or {"id": job_id}, kind))

    def _unchanged_toasted(self, job_id: str, record: dict[str, Any]) -> list[str]:
        """The columns of this UPDATE that Realtime would leave out: equal to the previous
        event's and stored out of line (over `toast_inline_max` bytes in the table)."""
        before, self._seen[job_id] = self._seen.get(job_id), record
        if before is None:
            return []
        candidates = [k for k, v in record.items() if k in before and before[k] == v
                      and len(json.dumps(v).encode()) > self.toast_inline_max]
        if not candidates:
            return []
        query = sql.SQL("select {} from public.ai_jobs where id = %s").format(
            sql.SQL(", ").join(sql.SQL("pg_column_size({})").format(sql.Identifier(k)) for k in candidates))
        with psycopg.connect(self.database_url) as conn:
            stored = conn.execute(query, (job_id,)).fetchone()
        if stored is None:
            return []
        return [k for k, size in zip(candidates, stored, strict=True) if size is not None and size > self.toast_inline_max]

    def _remember(self, job_ids: set[str]) -> None:
        """The rows as the channel joins: the "old" row of the first UPDATE it is sent."""
        with psycopg.connect(self.database_url) as conn:
            for job_id in job_ids:
                found = conn.execute("select to_jsonb(j) - 'locked_by' from public.ai_jobs j where id = %s",
                                     (job_id,)).fetchone()
                if found is not None:
                    self._seen.setdefault(job_id, found[0])

    def delete_row(self, job_id: str) -> None:
        """Delete the row (as the table owner) and send the DELETE event Realtime sends."""
        with psycopg.connect(self.database_url) as conn:
            conn.execute("delete from public.ai_jobs where id = %s", (job_id,))
        self.push_change(job_id, {"id": job_id}, "DELETE")

    def error_channel(self, job_id: str) -> None:
        for topic in self.channels_for(job_id):
            self._call(self._send_to_topic(topic, "phx_error", {}, drop=True))

    def drop_connections(self) -> None:
        """Close every websocket (a network blip): realtime-js reconnects and rejoins by itself."""

        async def close_all() -> None:
            for ws in list(self._open):
                await ws.close()

        self._call(close_all())

    def expire_token(self, job_id: str, seconds_ago: int = 0) -> None:
        """What the server does when a joined channel's token expires: system error, then phx_close."""
        self.shut_down(job_id, f"Token has expired {seconds_ago} seconds ago")

    def shut_down(self, job_id: str, message: str) -> None:
        """The server shutting the job's channels down (realtime_channel.ex `shutdown_response/2`,
        e.g. "Too many messages per second"): system error with the message, then phx_close."""
        for topic in self.channels_for(job_id):
            self._call(self._shutdown(topic, message))

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- realtime ----------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._open.add(ws)
        assert request.query.get("vsn") == "2.0.0", request.query
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            join_ref, ref, topic, event, payload = json.loads(msg.data)
            if topic == "phoenix" and event == "heartbeat":
                await self._send(ws, [None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}}])
            elif event == "phx_join":
                asyncio.create_task(self._join(ws, join_ref, ref, topic, payload))
            elif event == "access_token":
                await self._access_token(topic, payload.get("access_token"))
            elif event == "phx_leave":
                self.leaves.append(topic)
                self._forget(topic)
                await self._send(ws, [join_ref, ref, topic, "phx_reply", {"status": "ok", "response": {}}])
        self._open.discard(ws)
        for topic in [t for t, ch in self._channels.items() if ch.ws is ws]:
            self._forget(topic)
        return ws

    @staticmethod
    async def _send(ws: web.WebSocketResponse, frame: list[Any]) -> None:
        if not ws.closed:
            await ws.send_str(json.dumps(frame))

    @staticmethod
    def _token_claims(token: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """(claims, None) for a valid user token; (None, reason) otherwise, worded as the server does."""
        if not token:
            return {"role": "anon"}, None
        try:
            claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="authenticated",
                                options={"verify_exp": False})
        except jwt.PyJWTError as exc:
            return None, f"Error parsing JWT: {exc}"
        exp = claims.get("exp")
        if not isinstance(exp, int) or "role" not in claims:
            return None, "Fields `role` and `exp` are required in JWT"
        if exp <= int(time.time()):
            return None, f"Token has expired {int(time.time()) - exp} seconds ago"
        return claims, None

    async def _join(self, ws: web.WebSocketResponse, join_ref: str, ref: str, topic: str, payload: dict[str, Any]) -> None:
        self.joins.append({"topic": topic, **payload})
        while self.hold_joins.is_set() and not self._release.is_set():
            await asyncio.sleep(0.02)
        if self.join_delay:
            await asyncio.sleep(self.join_delay)
        if self.reject_joins > 0:
            self.reject_joins -= 1
            await self._send(ws, [join_ref, ref, topic, "phx_reply",
                                  {"status": "error", "response": {"reason": "simulated outage"}}])
            return
        config = payload.get("config") or {}
        private = config.get("private") is True
        if self.private_only and not private:
            await self._send(ws, [join_ref, ref, topic, "phx_reply", {"status": "error", "response": {
                "reason": "PrivateOnly: This project only allows private channels"}}])
            return
        token = payload.get("access_token")
        if token:
            self.access_tokens.append(token)
        claims, refusal = self._token_claims(token)
        if claims is None:
            # a refused join says "<code>: <message>" (realtime_channel.ex `join/3`: an expired
            # token or missing claims → maybe_log_warning(socket, "InvalidJWTToken", msg))
            await self._send(ws, [join_ref, ref, topic, "phx_reply", {"status": "error", "response": {
                "reason": refusal if (refusal or "").startswith("Error parsing") else f"InvalidJWTToken: {refusal}"}}])
            return
        sub_topic = topic.removeprefix("realtime:")
        if private and not await asyncio.get_running_loop().run_in_executor(None, self._may_read, claims, sub_topic):
            await self._send(ws, [join_ref, ref, topic, "phx_reply", {"status": "error", "response": {
                "reason": f"Unauthorized: You do not have permissions to read from this Channel topic: {sub_topic}"}}])
            return
        bindings = payload.get("config", {}).get("postgres_changes", [])
        ids = [(7000 + len(self.joins) * 10 + i, b) for i, b in enumerate(bindings)]
        channel = Channel(ws=ws, topic=topic, join_ref=join_ref, bindings=ids, claims=claims, private=private)
        for _, binding in ids:
            if str(binding.get("filter", "")).startswith("id=eq."):  # a uuid: compared in either case
                channel.job_ids.add(binding["filter"].removeprefix("id=eq.").lower())
        if private and (found := LIVE_TOPIC.match(sub_topic)):
            channel.job_ids.add(found.group(1))
        self._forget(topic)
        self._channels[topic] = channel
        await asyncio.get_running_loop().run_in_executor(None, self._remember, set(channel.job_ids))
        response = {"postgres_changes": [{**b, "id": i} for i, b in ids]}
        await self._send(ws, [join_ref, ref, topic, "phx_reply", {"status": "ok", "response": response}])
        self._watch_expiry(channel)
        if ids:
            asyncio.create_task(self._confirm_subscription(channel))
        if self._replication is None:  # the tenant's connection starts its replication at the first join
            self._replication = asyncio.create_task(self._start_replication())
        if (config.get("broadcast") or {}).get("replication_ready") and self.notify_replication:
            asyncio.create_task(self._notify_replication_ready(channel))

    async def _start_replication(self) -> None:
        await asyncio.sleep(self.replication_delay)
        while self.hold_replication.is_set() and not self._release_replication.is_set():
            await asyncio.sleep(0.02)
        self.replication_up = True

    async def _notify_replication_ready(self, channel: Channel) -> None:
        deadline = time.monotonic() + self.replication_ready_timeout
        while not self.replication_up:
            if time.monotonic() >= deadline:
                if self._channels.get(channel.topic) is channel:
                    await self._shutdown(channel.topic, "Replication connection was not established in time")
                return
            await asyncio.sleep(0.02)
        if self._channels.get(channel.topic) is channel:
            await self._send(channel.ws, [channel.join_ref, None, channel.topic, "system", {
                "extension": "system", "status": "ok", "message": "Replication connection established",
                "channel": channel.topic.removeprefix("realtime:")}])

    async def _database_broadcast(self, topic: str, event: str, payload: dict[str, Any]) -> int:
        if not self.replication_up:  # inserted before the slot existed: never streamed
            self.lost_broadcasts.append((topic, payload))
            return 0
        body = {"type": "broadcast", "event": event, "payload": payload, "meta": {"id": str(uuid.uuid4())}}
        sent = 0
        for channel in list(self._channels.values()):
            if channel.topic == f"realtime:{topic}" and channel.private:
                await self._send(channel.ws, [None, None, channel.topic, "broadcast", body])
                self.broadcasts.append((topic, event, payload))
                sent += 1
        return sent

    async def _confirm_subscription(self, channel: Channel) -> None:
        await asyncio.sleep(self.system_gap)
        while self.hold_system.is_set() and not self._release_system.is_set():
            await asyncio.sleep(0.02)
        if self._channels.get(channel.topic) is not channel:
            return
        channel.live = True
        # pushed by the channel process (Phoenix.Channel.push): the frame carries the join's ref,
        # as every `system` message does; @supabase/phoenix channel.js `isMember` drops a message
        # whose join_ref is not the channel's current one
        await self._send(channel.ws, [channel.join_ref, None, channel.topic, "system", {
            "extension": "postgres_changes", "status": "ok", "message": "Subscribed to PostgreSQL",
            "channel": channel.topic.removeprefix("realtime:")}])

    def _watch_expiry(self, channel: Channel) -> None:
        if channel.expiry:
            channel.expiry.cancel()
        exp = channel.claims.get("exp")
        if not isinstance(exp, int):
            return

        async def expire() -> None:
            await asyncio.sleep(max(0.0, exp - time.time()))
            if self._channels.get(channel.topic) is channel:
                await self._shutdown(channel.topic, f"Token has expired {max(0, int(time.time()) - exp)} seconds ago")

        channel.expiry = asyncio.create_task(expire())

    async def _access_token(self, topic: str, token: str | None) -> None:
        if token:
            self.access_tokens.append(token)
        channel = self._channels.get(topic)
        if channel is None or not token:
            return
        claims, refusal = self._token_claims(token)
        if claims is None:
            await self._shutdown(topic, refusal or "invalid token")
            return
        channel.claims = claims
        self._watch_expiry(channel)

    async def _shutdown(self, topic: str, message: str) -> None:
        channel = self._channels.get(topic)
        if channel is None:
            return
        self._forget(topic)
        self.closes.append(topic)
        await self._send(channel.ws, [channel.join_ref, None, topic, "system", {
            "extension": "system", "status": "error", "message": message, "channel": topic.removeprefix("realtime:")}])
        await self._send(channel.ws, [channel.join_ref, channel.join_ref, topic, "phx_close", {}])

    def _forget(self, topic: str) -> None:
        channel = self._channels.pop(topic, None)
        if channel and channel.expiry and channel.expiry is not asyncio.current_task():
            channel.expiry.cancel()

    def _may_read(self, claims: dict[str, Any], sub_topic: str) -> bool:
        """Realtime Authorization's read check for a private topic, as our policy states it."""
        if claims.get("role") == "service_role":
            return True
        found = LIVE_TOPIC.match(sub_topic)
        return claims.get("role") == "authenticated" and found is not None and self._visible_to(claims, found.group(1))

    def _visible_to(self, claims: dict[str, Any], job_id: str) -> bool:
        with psycopg.connect(self.database_url) as conn, conn.transaction():
            act_as(conn, claims, path="/realtime")
            return conn.execute("select exists (select 1 from public.ai_jobs where id = %s)", (job_id,)).fetchone()[0]

    def _truncate(self, record: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
        if len(json.dumps(record).encode()) <= self.max_record_bytes:
            return record, None
        kept = {k: v for k, v in record.items() if k == "id" or len(json.dumps(v).encode()) <= 64}
        return kept, ["Error 413: Payload Too Large"]

    async def _send_change(self, job_id: str, record: dict[str, Any], kind: str) -> int:
        loop = asyncio.get_running_loop()
        sent = 0
        for topic, channel in list(self._channels.items()):
            ids = []
            for bind_id, binding in channel.bindings:
                if binding.get("table") not in ("ai_jobs", "*") or binding.get("event") not in ("*", kind):
                    continue
                # the filter value is cast to the column's type (check_equality_op.sql): uuids match in either case
                if kind == "DELETE" or binding.get("filter") is None or str(binding["filter"]).lower() == f"id=eq.{job_id}":
                    ids.append(bind_id)
            if not ids:
                continue
            if kind != "DELETE" and not await loop.run_in_executor(None, self._visible_to, channel.claims, job_id):
                continue
            if not channel.live:
                self.dropped.append((topic, kind))
                continue
            if kind == "DELETE":
                new, old, errors = {}, {"id": job_id}, None
            else:
                new, errors = self._truncate(record)
                old = {"id": job_id}
            columns = [{"name": name, "type": COLUMN_TYPES.get(name, "timestamptz" if name.endswith("_at") else "text")}
                       for name in (new or old)]
            data = {"schema": "public", "table": "ai_jobs", "commit_timestamp": datetime.now(UTC).isoformat(),
                    "type": kind, "record": new, "old_record": old, "columns": columns, "errors": errors}
            await self._send(channel.ws, [None, None, topic, "postgres_changes", {"ids": ids, "data": data}])
            self.delivered.append((topic, kind, job_id))
            sent += 1
        return sent

    async def _send_to_topic(self, topic: str, event: str, payload: dict[str, Any], drop: bool = False) -> None:
        channel = self._channels.get(topic)
        if channel is None:
            return
        if drop:
            self._forget(topic)
        await self._send(channel.ws, [channel.join_ref, channel.join_ref, topic, event, payload])

    # -- REST --------------------------------------------------------------------------

    def _claims(self, request: web.Request) -> dict[str, Any]:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        return jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="authenticated")

    def _read_as(self, claims: dict[str, Any], job_id: str, select: str = "*") -> list[dict[str, Any]]:
        """As PostgREST runs `?select=a,b&id=eq.<id>`: the named columns (`*`: all of
        them, which column privileges refuse when one is not granted) under RLS."""
        columns = sql.SQL("j.*") if select == "*" else sql.SQL(", ").join(
            sql.Identifier(name.strip()) for name in select.split(","))
        query = sql.SQL("select to_jsonb(x) from (select {} from public.ai_jobs j where id = %s) x").format(columns)
        with psycopg.connect(self.database_url) as conn, conn.transaction():
            act_as(conn, claims, path="/ai_jobs")
            rows = conn.execute(query, (job_id,)).fetchall()
        return [r[0] for r in rows]

    async def _rest_read(self, request: web.Request) -> web.StreamResponse:
        job_id = request.query.get("id", "").removeprefix("eq.")
        self.rest_reads[job_id] += 1
        self.rest_tokens.append(request.headers.get("authorization", "").removeprefix("Bearer "))
        if self.read_failures:
            failure = self.read_failures.pop(0)
            self.rest_failures_served.append(failure)
            if failure == "drop":
                assert request.transport is not None
                request.transport.abort()
                raise asyncio.CancelledError
            if failure.startswith("slow:"):
                await asyncio.sleep(float(failure.removeprefix("slow:")))
            elif failure == "504":
                return web.json_response({"code": "PGRST003", "message": "Timed out acquiring connection from connection pool.",
                                          "details": None, "hint": None}, status=504)
            else:
                return web.json_response({"code": "", "message": f"simulated {failure}", "details": None, "hint": None},
                                         status=int(failure))
        try:
            claims = self._claims(request)
        except jwt.ExpiredSignatureError:
            return web.json_response({"code": "PGRST303", "message": "JWT expired", "details": None, "hint": None}, status=401)
        except jwt.PyJWTError as exc:
            return web.json_response({"code": "PGRST301", "message": str(exc), "details": None, "hint": None}, status=401)
        select = request.query.get("select", "*")
        try:
            rows = await asyncio.get_running_loop().run_in_executor(None, self._read_as, claims, job_id, select)
        except psycopg.errors.InsufficientPrivilege as exc:
            return web.json_response({"code": "42501", "message": str(exc).splitlines()[0], "details": None,
                                      "hint": None}, status=403)
        if "vnd.pgrst.object" in request.headers.get("accept", ""):
            if len(rows) != 1:
                return web.json_response({"code": "PGRST116", "message": "JSON object requested, multiple (or no) rows returned",
                                          "details": f"The result contains {len(rows)} rows", "hint": None}, status=406)
            return web.json_response(rows[0])
        return web.json_response(rows)

    async def _api_cancel(self, request: web.Request) -> web.Response:
        """The API's cancel (store.request_cancel as the token's user); the answer can be held
        back (`cancel_delay`) so that a newer Realtime event arrives first."""
        job_id = request.match_info["job_id"]
        self.api_tokens.append(request.headers.get("authorization", "").removeprefix("Bearer "))
        claims = self._claims(request)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: self.store.request_cancel(uuid.UUID(job_id), user_id=uuid.UUID(claims["sub"])))
        rows = await loop.run_in_executor(None, self._read_as, claims, job_id, API_COLUMNS)
        await asyncio.sleep(self.cancel_delay)
        return web.json_response(rows[0])

    async def _api_read(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        self.api_reads[job_id] += 1
        self.api_tokens.append(request.headers.get("authorization", "").removeprefix("Bearer "))
        claims = self._claims(request)
        # the API answers the owner's view (schemas.Job: every column but locked_by)
        rows = await asyncio.get_running_loop().run_in_executor(None, self._read_as, claims, job_id, API_COLUMNS)
        return web.json_response(rows[0]) if rows else web.json_response({"detail": "job not found"}, status=404)
