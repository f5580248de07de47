"""Live Claude output (issue 14): the worker streams text deltas to the job's private
Broadcast topic through the local Realtime edge's broadcast endpoint (the same
`POST /realtime/v1/api/broadcast` as Supabase's), coalesced, sequenced and offset,
and keeps the text so far on the row with its coalesced progress writes only.

Real parts: PostgreSQL with the migrations and the dev change feed (it records every
write to a job row, which is how writes are counted), the edge over real websockets
and HTTP, the worker (Runner) and the Anthropic SDK against the wire-format fake
server (tests/anthropic_wire.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import psycopg
import pytest

from ai_jobs.claude.client import reset_clients
from ai_jobs.claude.live import LiveSettings, LiveStream, Publisher, partial_json, utf16_len
from ai_jobs.database.migrations import migrate
from ai_jobs.devtools import mint_token
from ai_jobs.localstack import mint_anon_key, mint_service_key
from ai_jobs.localstack.edge import SupabaseEdge
from ai_jobs.localstack.feed import install_feed
from ai_jobs.models import Job, JobStatus
from ai_jobs.registry import load_job_modules
from ai_jobs.runner import Runner
from ai_jobs.store.postgres import PostgresStore
from tests.anthropic_wire import FakeAnthropicServer, paced, sse_events
from tests.realtime_socket import RealtimeSocket, add_user, open_websocket, run_in_thread

SECRET = "live-output-test-secret-with-more-than-32-characters"


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feed_db(database_url: str) -> Iterator[str]:
    """A database of its own with the dev change feed (it records each row write)."""
    name = f"ai_jobs_live_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    url = psycopg.conninfo.make_conninfo(database_url, dbname=name)
    migrate(url)
    install_feed(url)
    yield url
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'drop database "{name}" with (force)')


@pytest.fixture(scope="module")
def edge(feed_db: str) -> Iterator[SupabaseEdge]:
    server = SupabaseEdge(feed_db, SECRET, access_log=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(feed_db: str) -> Iterator[PostgresStore]:
    with PostgresStore(feed_db) as s:
        yield s


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch, edge: SupabaseEdge) -> Iterator[FakeAnthropicServer]:
    server = FakeAnthropicServer().start()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    for name in ("AI_JOBS_MODEL", "AI_JOBS_CLAUDE_TIMEOUT", "AI_JOBS_RATE_LIMITS", "AI_JOBS_CLAUDE_TOKENS_PER_SECOND",
                 "AI_JOBS_LIVE_OUTPUT", "AI_JOBS_LIVE_INTERVAL_MS", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AI_JOBS_PROMPT_CACHE", "off")
    monkeypatch.setenv("AI_JOBS_REALTIME_URL", edge.url)
    monkeypatch.setenv("AI_JOBS_REALTIME_KEY", mint_service_key(SECRET))
    reset_clients()
    yield server
    server.stop()
    reset_clients()


def _writes(url: str, job: uuid.UUID) -> int:
    """Row writes to the job (the dev feed's trigger records each INSERT/UPDATE/DELETE)."""
    with psycopg.connect(url) as conn:
        return conn.execute("select count(*) from ai_jobs_dev.changes where old_pk->>'id' = %s",
                            (str(job),)).fetchone()[0]


class Socket(RealtimeSocket):
    """Joins a broadcast channel (a job's live output), as the browser client does."""

    async def join(self, name: str, token: str, *, private: bool = True, ack: bool = False) -> dict[str, Any]:
        ref = await self.push(f"realtime:{name}", "phx_join", {
            "config": {"broadcast": {"ack": ack, "self": False}, "presence": {"key": "", "enabled": False},
                       "postgres_changes": [], "private": private},
            "access_token": token})
        reply = await self.wait_for(lambda frame: frame[3] == "phx_reply" and frame[1] == ref)
        return reply[4]

    def broadcasts(self) -> list[tuple[float, dict[str, Any]]]:
        """(arrival time, payload) of each broadcast received."""
        return [(at, f[4]) for at, f in zip(self.arrived, self.frames) if f[3] == "broadcast"]


async def _connect(session: aiohttp.ClientSession, edge: SupabaseEdge) -> Socket:
    return Socket(await open_websocket(session, edge.url, mint_anon_key(SECRET)))


def _words(tokens: int) -> str:
    return "".join(f"w{i % 10} " for i in range(tokens))  # about one token per word


def _reply(text: str, *, tokens: int, chunks: int, seconds: float) -> list[Any]:
    return paced(sse_events(text, output_tokens=tokens, chunks=chunks), seconds / (chunks + 5))


def _run_job(store: PostgresStore, user: uuid.UUID, job_type: str, data: dict[str, Any]) -> tuple[uuid.UUID, Job]:
    registry = load_job_modules()
    job_id = store.enqueue(registry.new_job(user, job_type, data)).job.id
    Runner(store, registry).run_available(job_id=job_id, max_jobs=1)
    return job_id, store.get(job_id)


def _assemble(messages: list[dict[str, Any]]) -> str:
    """What a client shows: deltas applied by offset, overlap dropped; a gap fails."""
    text = ""
    for message in sorted(messages, key=lambda m: m["seq"]):
        length = utf16_len(text)
        assert message["offset"] <= length, f"gap before seq {message['seq']}"
        skip = length - message["offset"]
        delta = message["delta"].encode("utf-16-le")[2 * skip:].decode("utf-16-le")
        text += delta
    return text


# -- pieces --------------------------------------------------------------------------------


def test_partial_json_closes_what_is_open() -> None:
    assert partial_json("") is None
    assert partial_json('{"name": "Ada Lov') == {"name": "Ada Lov"}
    assert partial_json('{"name": "Ada", "tags": ["x", "y') == {"name": "Ada", "tags": ["x", "y"]}
    assert partial_json('{"name": "Ada", "ag') == {"name": "Ada"}
    assert partial_json('{"name": "Ada", "age": ') == {"name": "Ada"}
    assert partial_json('{"a": 1, "b": tr') == {"a": 1}
    assert partial_json('{"q": "say \\"hi\\') == {"q": 'say "hi'}
    assert partial_json('[1, 2, {"k": [3') == [1, 2, {"k": [3]}]
    assert partial_json('{"done": true}') == {"done": True}


def test_stream_offsets_are_utf16_and_coalesced() -> None:
    sent: list[list[dict[str, Any]]] = []
    publisher = Publisher(LiveSettings(True, "http://unused", "k", 0.1, 1.0), send=sent.append, start=False)
    try:
        stream = LiveStream(uuid.uuid4(), "text", publisher)
        for piece in ("Hé", "llo 👋", " wörld", "!"):
            stream.feed(piece)
        snapshot = stream.snapshot()
        assert snapshot is not None and snapshot["text"] == "Héllo 👋 wörld!" and snapshot["format"] == "text"
        assert stream.snapshot() is None  # unchanged: nothing to rewrite
        publisher.flush()  # one message for the four deltas
        stream.feed("🎉 end")
        stream.close()
        publisher.flush()
    finally:
        publisher.stop()
    payloads = [m["payload"] for batch in sent for m in batch]
    assert [(p["seq"], p["offset"], p["done"]) for p in payloads] == [(1, 0, False), (2, len("Héllo 👋 wörld!") + 1, True)]
    assert _assemble(payloads) == "Héllo 👋 wörld!🎉 end"
    assert all(m["topic"] == f"ai-jobs-live:{stream.job_id}" and m["private"] is True and m["event"] == "output"
               for batch in sent for m in batch)


def test_live_settings_are_checked() -> None:
    assert LiveSettings.from_env({}).publishes is False  # no Realtime URL and key: nothing is sent
    on = LiveSettings.from_env({"SUPABASE_URL": "https://x.supabase.co/", "SUPABASE_SERVICE_ROLE_KEY": "k"})
    assert on.publishes and on.url == "https://x.supabase.co" and on.interval_seconds == 0.1
    assert not LiveSettings.from_env({"SUPABASE_URL": "u", "SUPABASE_SERVICE_ROLE_KEY": "k",
                                      "AI_JOBS_LIVE_OUTPUT": "off"}).publishes
    with pytest.raises(ValueError, match="AI_JOBS_LIVE_INTERVAL_MS"):
        LiveSettings.from_env({"AI_JOBS_LIVE_INTERVAL_MS": "50"})  # more than 10 messages per second
    with pytest.raises(ValueError, match="AI_JOBS_LIVE_OUTPUT"):
        LiveSettings.from_env({"AI_JOBS_LIVE_OUTPUT": "maybe"})


# -- end to end ------------------------------------------------------------------------------


def test_owner_sees_text_grow_others_see_nothing_and_browsers_cannot_send(
        edge: SupabaseEdge, store: PostgresStore, feed_db: str, fake: FakeAnthropicServer) -> None:
    owner, other = add_user(feed_db), add_user(feed_db)
    text = _words(600)
    fake.replies = [_reply(text, tokens=600, chunks=120, seconds=2.0)]
    registry = load_job_modules()
    job_id = store.enqueue(registry.new_job(owner, "ai.generate", {"prompt": "write"})).job.id
    name = f"ai-jobs-live:{job_id}"

    async def scenario() -> tuple[Socket, Socket, dict[str, Any], dict[str, Any], float]:
        async with aiohttp.ClientSession() as session:
            mine, theirs, public = [await _connect(session, edge) for _ in range(3)]
            joined = await mine.join(name, mint_token(SECRET, owner))
            refused = await theirs.join(name, mint_token(SECRET, other))
            await public.join(name, mint_token(SECRET, other), private=False)  # same name, public: another topic
            started = time.monotonic()
            await asyncio.to_thread(Runner(store, registry).run_available, job_id=job_id, max_jobs=1)
            took = time.monotonic() - started
            # the owner's browser tries to send on the private topic, over the socket and over REST
            await mine.push(f"realtime:{name}", "broadcast", {"type": "broadcast", "event": "output",
                                                              "payload": {"delta": "forged"}})
            async with session.post(f"{edge.url}/realtime/v1/api/broadcast",
                                    headers={"apikey": mint_anon_key(SECRET),
                                             "Authorization": f"Bearer {mint_token(SECRET, owner)}"},
                                    json={"messages": [{"topic": name, "event": "output", "private": True,
                                                        "payload": {"delta": "forged"}}]}) as response:
                assert response.status == 202  # as the server: accepted, then skipped by the write check
            await asyncio.sleep(0.6)
            for sock in (mine, theirs, public):
                await sock.close()
            return mine, public, joined, refused, took

    mine, public, joined, refused, took = run_in_thread(scenario())
    job = store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert joined["status"] == "ok"
    assert refused["status"] == "error" and "Unauthorized" in refused["response"]["reason"]
    messages = [p["payload"] for _, p in mine.broadcasts()]
    assert all("forged" not in m.get("delta", "") for m in messages), "a browser published on the private topic"
    assert public.broadcasts() == [], "a public channel of the same name received the private stream"
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert len(messages) >= 5, f"only {len(messages)} steps"
    assert _assemble(messages) == job.result["text"] == text
    assert messages[-1]["done"] is True and {m["stream"] for m in messages} == {messages[0]["stream"]}
    # at most 10 messages a second
    assert len(messages) <= took * 10 + 2, (len(messages), took)
    # the row holds the snapshot of the same stream (written with the progress writes)
    with psycopg.connect(feed_db) as conn:
        snapshot = conn.execute("select stream from public.ai_jobs where id = %s", (job_id,)).fetchone()[0]
    assert snapshot["id"] == messages[0]["stream"] and snapshot["format"] == "text"
    assert text.startswith(snapshot["text"]) and len(snapshot["text"]) > 0


def test_database_writes_do_not_grow_with_tokens(
        edge: SupabaseEdge, store: PostgresStore, feed_db: str, fake: FakeAnthropicServer) -> None:
    owner = add_user(feed_db)
    results: dict[int, tuple[int, int]] = {}
    for tokens, chunks in ((200, 40), (2000, 400)):
        before = sum(edge.broadcast_api_messages.values())
        fake.replies = [_reply(_words(tokens), tokens=tokens, chunks=chunks, seconds=1.5)]
        job_id, job = _run_job(store, owner, "ai.generate", {"prompt": "write", "max_tokens": 4096})
        assert job.status is JobStatus.COMPLETED, job.error
        assert job.result["text"] == _words(tokens)
        results[tokens] = (_writes(feed_db, job_id), sum(edge.broadcast_api_messages.values()) - before)
    (writes_200, messages_200), (writes_2000, messages_2000) = results[200], results[2000]
    # the same duration, ten times the tokens: the same number of row writes (±1 for timing)
    assert abs(writes_2000 - writes_200) <= 1, results
    assert writes_2000 <= 12, results  # insert, claim, a few progress writes, checkpoint/complete
    # and about the same number of Realtime messages (coalesced per 100 ms, not per delta)
    assert messages_2000 <= messages_200 + 4 and messages_2000 < 400 / 5, results


def test_extract_streams_growing_json(
        edge: SupabaseEdge, store: PostgresStore, feed_db: str, fake: FakeAnthropicServer) -> None:
    owner = add_user(feed_db)
    value = {"name": "Ada Lovelace", "topics": [f"topic number {i}" for i in range(30)]}
    body = json.dumps(value)
    fake.replies = [_reply(body, tokens=300, chunks=60, seconds=1.5)]
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "topics": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "topics"]}
    registry = load_job_modules()
    job_id = store.enqueue(registry.new_job(owner, "ai.extract", {"text": "t", "schema": schema})).job.id

    async def scenario() -> Socket:
        async with aiohttp.ClientSession() as session:
            mine = await _connect(session, edge)
            assert (await mine.join(f"ai-jobs-live:{job_id}", mint_token(SECRET, owner)))["status"] == "ok"
            await asyncio.to_thread(Runner(store, registry).run_available, job_id=job_id, max_jobs=1)
            await asyncio.sleep(0.4)
            await mine.close()
            return mine

    messages = [p["payload"] for _, p in run_in_thread(scenario()).broadcasts()]
    job = store.get(job_id)
    assert job.status is JobStatus.COMPLETED, job.error
    assert all(m["format"] == "json" for m in messages) and len(messages) >= 5
    partials = [m["partial"] for m in messages]
    sizes = [len(p.get("topics", [])) if isinstance(p, dict) else 0 for p in partials]
    assert sizes == sorted(sizes) and len(set(sizes)) >= 3, sizes  # the JSON grows
    assert partials[-1] == job.result["data"] == value
    assert _assemble(messages) == body


class _Stall:
    """A TCP listener that never answers: the broadcast endpoint hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


def test_a_hanging_realtime_never_slows_the_call(
        store: PostgresStore, feed_db: str, fake: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from ai_jobs.claude import live

    owner = add_user(feed_db)
    stall = _Stall()
    try:
        monkeypatch.setenv("AI_JOBS_REALTIME_URL", stall.url)
        monkeypatch.setenv("AI_JOBS_LIVE_TIMEOUT_SECONDS", "4")
        fake.replies = [_reply(_words(300), tokens=300, chunks=60, seconds=1.0)]
        started = time.monotonic()
        _, job = _run_job(store, owner, "ai.generate", {"prompt": "write"})
        took = time.monotonic() - started
        assert job.status is JobStatus.COMPLETED and job.result["text"] == _words(300)
        # the 1 s stream plus the job's own writes; one hung POST alone would have taken 4 s
        assert took < 3.0, took
        publisher = live.publisher()
        assert publisher is not None
        def warned() -> bool:
            return any("dropped" in r.getMessage() for r in caplog.records)

        # the publisher's thread counts the drop, then logs it: wait for both
        deadline = time.monotonic() + 8
        while (publisher.messages_dropped == 0 or not warned()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.messages_dropped >= 1 and publisher.messages_sent == 0
        assert warned()
    finally:
        stall.close()


def test_edge_broadcast_endpoint_and_private_joins(edge: SupabaseEdge, feed_db: str) -> None:
    owner, other = add_user(feed_db), add_user(feed_db)
    with psycopg.connect(feed_db, autocommit=True) as conn:
        job = conn.execute("insert into public.ai_jobs (user_id, job_type, input) values (%s, 'ai.generate', '{}') "
                           "returning id", (owner,)).fetchone()[0]
    name = f"ai-jobs-live:{job}"
    service = mint_service_key(SECRET)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with aiohttp.ClientSession() as session:
            url = f"{edge.url}/realtime/v1/api/broadcast"
            async with session.post(url, headers={"apikey": "not-a-jwt"}, json={"messages": []}) as r:
                out["bad_key"] = r.status
            async with session.post(url, headers={"apikey": service}, json={"messages": []}) as r:
                out["empty"] = r.status
            async with session.post(url, headers={"apikey": service},
                                    json={"messages": [{"topic": name, "event": "output", "payload": "text"}]}) as r:
                out["not_object"] = r.status
            sock = await _connect(session, edge)
            out["anon"] = await sock.join(name, mint_anon_key(SECRET))
            out["foreign_topic"] = await sock.join("some-room", mint_token(SECRET, owner))
            out["owner"] = await sock.join(name, mint_token(SECRET, owner))
            # the token is swapped for another user's: the channel is closed (permission revoked)
            await sock.push(f"realtime:{name}", "access_token", {"access_token": mint_token(SECRET, other)})
            await asyncio.sleep(0.3)
            async with session.post(url, headers={"apikey": service}, json={"messages": [
                    {"topic": name, "event": "output", "payload": {"delta": "after"}, "private": True}]}) as r:
                out["after_status"] = r.status
            await asyncio.sleep(0.2)
            out["frames"] = list(sock.frames)
            await sock.close()
        return out

    out = run_in_thread(scenario())
    assert (out["bad_key"], out["empty"], out["not_object"]) == (401, 422, 422)
    assert out["anon"]["status"] == "error" and out["foreign_topic"]["status"] == "error"
    assert out["owner"]["status"] == "ok"
    events = [f[3] for f in out["frames"] if f[2] == f"realtime:{name}"]
    assert "phx_close" in events and "broadcast" not in events, events
    assert out["after_status"] == 202


def test_status_over_broadcast_from_the_database_under_dev(edge: SupabaseEdge, feed_db: str, database_url: str) -> None:
    """The opt-in status trigger calls realtime.send; under `ai-jobs dev` that is the
    feed's stand-in, which the edge delivers on the private topic (owner only)."""
    owner, other = add_user(feed_db), add_user(feed_db)
    with psycopg.connect(feed_db, autocommit=True) as conn:
        job = conn.execute("insert into public.ai_jobs (user_id, job_type, input) values (%s, 'ai.generate', '{}') "
                           "returning id", (owner,)).fetchone()[0]
        assert conn.execute("select public.ai_jobs_status_broadcast_v1(true)").fetchone()[0] is True
    name = f"ai-jobs-live:{job}"

    async def scenario() -> tuple[Socket, dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            mine, theirs = await _connect(session, edge), await _connect(session, edge)
            assert (await mine.join(name, mint_token(SECRET, owner)))["status"] == "ok"
            refused = await theirs.join(name, mint_token(SECRET, other))
            with psycopg.connect(feed_db, autocommit=True) as conn:
                conn.execute("update public.ai_jobs set progress = 30, progress_message = 'a third' where id = %s", (job,))
                conn.execute("update public.ai_jobs set priority = -1 where id = %s", (job,))  # not a status change
                conn.execute("delete from public.ai_jobs where id = %s", (job,))
            await asyncio.sleep(0.5)
            await mine.close()
            await theirs.close()
            return mine, refused

    try:
        mine, refused = run_in_thread(scenario())
    finally:
        with psycopg.connect(feed_db, autocommit=True) as conn:
            conn.execute("select public.ai_jobs_status_broadcast_v1(false)")
    events = [(p["event"], p["payload"].get("op"), p["payload"].get("progress")) for _, p in mine.broadcasts()]
    assert events == [("status", "UPDATE", 30), ("status", "DELETE", None)], events
    assert refused["status"] == "error"

    # remove_feed takes the stand-in away and the triggers that would call it
    from ai_jobs.localstack.feed import remove_feed

    name2 = f"ai_jobs_live_rm_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'create database "{name2}"')
    url = psycopg.conninfo.make_conninfo(database_url, dbname=name2)
    try:
        migrate(url)
        install_feed(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("select public.ai_jobs_status_broadcast_v1(true)")
        remove_feed(url)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("select to_regprocedure('realtime.send(jsonb, text, text, boolean)')").fetchone()[0] is None
            assert conn.execute("select count(*) from pg_trigger where tgname like 'ai_jobs_status_broadcast%'").fetchone()[0] == 0
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                conn.execute("select public.ai_jobs_status_broadcast_v1(true)")  # plain PostgreSQL: no realtime.send
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'drop database "{name2}" with (force)')
