"""A loopback stand-in for Supabase's hosted edge, for the browser client tests.

- Realtime: the websocket protocol realtime-js speaks (Phoenix, vsn 2.0.0 JSON
  array frames): heartbeats, phx_join with postgres_changes bindings and
  access_token, phx_reply with binding ids, postgres_changes messages,
  phx_error, phx_leave. Tests control joins and push changes.
- REST: GET /rest/v1/ai_jobs?id=eq.<uuid>, executed against the test database
  under the caller's role and JWT claims, as PostgREST does (RLS decides).
- GET /api/jobs/<id> (the ai-jobs API read, for the polling comparison).
- Static files: the harness page, public/ai-jobs.js and supabase-js's UMD build.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
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


class FakeSupabase:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.joins: list[dict[str, Any]] = []
        self.leaves: list[str] = []
        self.access_tokens: list[str] = []
        self.rest_reads: Counter[str] = Counter()
        self.api_reads: Counter[str] = Counter()
        self.reject_joins = 0
        self.hold_joins = threading.Event()  # set = hold join replies until release_joins()
        self._release = threading.Event()
        self._sockets: dict[str, tuple[web.WebSocketResponse, str, list[int]]] = {}
        self._open: set[web.WebSocketResponse] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> str:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/realtime/v1/websocket", self._websocket)
            app.router.add_get("/rest/v1/ai_jobs", self._rest_read)
            app.router.add_get("/api/jobs/{job_id}", self._api_read)
            for path, file in (("/", HERE / "realtime_harness.html"), ("/ai-jobs.js", REPO / "public" / "ai-jobs.js"),
                               ("/supabase.js", SUPABASE_UMD)):
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

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)

    @staticmethod
    def _static(file: Path) -> Any:
        async def handler(request: web.Request) -> web.FileResponse:
            return web.FileResponse(file)

        return handler

    # -- test controls -----------------------------------------------------------------

    def release_joins(self) -> None:
        self.hold_joins.clear()
        self._release.set()

    def row(self, job_id: str) -> dict[str, Any]:
        """The row as Realtime sends it (JSON values, timestamps as text; columns the
        subscriber's role may not select, i.e. locked_by, left out)."""
        with psycopg.connect(self.database_url) as conn:
            return conn.execute("select to_jsonb(j) - 'locked_by' from public.ai_jobs j where id = %s",
                                (job_id,)).fetchone()[0]

    def push_change(self, job_id: str, record: dict[str, Any], kind: str = "UPDATE") -> None:
        topic = f"realtime:ai-jobs:{job_id}"
        self._call(self._send_change(topic, record, kind))

    def error_channel(self, job_id: str) -> None:
        topic = f"realtime:ai-jobs:{job_id}"
        self._call(self._send_to_topic(topic, "phx_error", {}))

    def _call(self, coro: Any) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

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
                await ws.send_str(json.dumps([None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}}]))
            elif event == "phx_join":
                asyncio.create_task(self._join(ws, join_ref, ref, topic, payload))
            elif event == "access_token":
                self.access_tokens.append(payload.get("access_token"))
            elif event == "phx_leave":
                self.leaves.append(topic)
                self._sockets.pop(topic, None)
                await ws.send_str(json.dumps([join_ref, ref, topic, "phx_reply", {"status": "ok", "response": {}}]))
        self._open.discard(ws)
        return ws

    async def _join(self, ws: web.WebSocketResponse, join_ref: str, ref: str, topic: str, payload: dict[str, Any]) -> None:
        self.joins.append({"topic": topic, **payload})
        while self.hold_joins.is_set() and not self._release.is_set():
            await asyncio.sleep(0.02)
        if self.reject_joins > 0:
            self.reject_joins -= 1
            await ws.send_str(json.dumps([join_ref, ref, topic, "phx_reply",
                                          {"status": "error", "response": {"reason": "simulated outage"}}]))
            return
        bindings = payload.get("config", {}).get("postgres_changes", [])
        ids = [1000 + i for i in range(len(bindings))]
        response = {"postgres_changes": [{**b, "id": i} for b, i in zip(bindings, ids)]}
        self._sockets[topic] = (ws, join_ref, ids)
        if payload.get("access_token"):
            self.access_tokens.append(payload["access_token"])
        await ws.send_str(json.dumps([join_ref, ref, topic, "phx_reply", {"status": "ok", "response": response}]))

    async def _send_change(self, topic: str, record: dict[str, Any], kind: str) -> None:
        ws, join_ref, ids = self._sockets[topic]
        columns = [{"name": name, "type": COLUMN_TYPES.get(name, "timestamptz" if name.endswith("_at") else "text")}
                   for name in record]
        data = {
            "schema": "public", "table": "ai_jobs", "commit_timestamp": datetime.now(UTC).isoformat(),
            "type": kind, "record": record, "old_record": {"id": record["id"]}, "columns": columns, "errors": None,
        }
        await ws.send_str(json.dumps([None, None, topic, "postgres_changes", {"ids": ids, "data": data}]))

    async def _send_to_topic(self, topic: str, event: str, payload: dict[str, Any]) -> None:
        ws, join_ref, _ = self._sockets.pop(topic)
        await ws.send_str(json.dumps([join_ref, join_ref, topic, event, payload]))

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

    async def _rest_read(self, request: web.Request) -> web.Response:
        job_id = request.query.get("id", "").removeprefix("eq.")
        self.rest_reads[job_id] += 1
        try:
            claims = self._claims(request)
        except jwt.PyJWTError as exc:
            return web.json_response({"code": "PGRST301", "message": str(exc)}, status=401)
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

    async def _api_read(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        self.api_reads[job_id] += 1
        claims = self._claims(request)
        # the API answers the owner's view (schemas.Job: every column but locked_by)
        rows = await asyncio.get_running_loop().run_in_executor(None, self._read_as, claims, job_id, API_COLUMNS)
        return web.json_response(rows[0]) if rows else web.json_response({"detail": "job not found"}, status=404)
