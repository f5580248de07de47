"""A websocket client for the local edge's Realtime endpoint, framing messages as
realtime-js does, plus the helpers the edge's tests share.

Frames are text JSON arrays `[join_ref, ref, topic, event, payload]`: what
realtime-js's vsn 2.0.0 serializer writes for a text frame
(tests/browser/js/node_modules/@supabase/realtime-js/dist/main/lib/serializer.js,
chosen in dist/main/RealtimeClient.js; 2.0.0 is its default). Each test module
adds the join it needs (postgres_changes or broadcast)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import psycopg


class RealtimeSocket:
    """Keeps every frame received, with the monotonic time it arrived."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[list[Any]] = []
        self.arrived: list[float] = []  # time.monotonic() of each frame, in step with `frames`
        self._reader = asyncio.ensure_future(self._read())
        self._ref = 0

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.arrived.append(time.monotonic())
                self.frames.append(json.loads(msg.data))

    async def push(self, topic: str, event: str, payload: dict[str, Any], join_ref: str | None = "1") -> str:
        """Send one frame; its ref, which the server's reply carries."""
        self._ref += 1
        await self.ws.send_str(json.dumps([join_ref, str(self._ref), topic, event, payload]))
        return str(self._ref)

    def events(self, event: str) -> list[list[Any]]:
        return [f for f in self.frames if f[3] == event]

    async def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 5) -> list[Any]:
        """The first frame received that matches, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.frames:
                if predicate(frame):
                    return frame
            await asyncio.sleep(0.01)
        raise AssertionError(f"no such frame within {timeout} s; got {self.frames}")

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


async def open_websocket(session: aiohttp.ClientSession, edge_url: str, apikey: str) -> aiohttp.ClientWebSocketResponse:
    """The socket realtime-js opens: /realtime/v1/websocket with the apikey and vsn 2.0.0."""
    return await session.ws_connect(f"{edge_url.replace('http', 'ws')}/realtime/v1/websocket?apikey={apikey}&vsn=2.0.0")


def run_in_thread(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on a thread of its own: Playwright's sync API (the browser tests of the
    same `make test` session) keeps an event loop running on the main thread."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def add_user(url: str) -> uuid.UUID:
    """A new auth.users row; its id."""
    user = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into auth.users (id, email) values (%s, %s)", (user, f"{user.hex[:8]}@example.com"))
    return user
