"""The local Supabase edge of `ai-jobs dev` (ai_jobs.localstack), over real
websockets and HTTP against a real PostgreSQL with the migrations and the dev
change feed: the Realtime protocol as supabase-js 2.119.1 speaks it, changes only
to the row's owner (checked as that user), DELETE unfiltered with only the key,
truncated large rows, token expiry, and the PostgREST-shaped read."""

from __future__ import annotations

import asyncio
import json
import random
import string
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import psycopg
import pytest

from ai_jobs.database.migrations import migrate
from ai_jobs.devtools import mint_token
from ai_jobs.localstack import mint_anon_key
from ai_jobs.localstack.edge import SupabaseEdge
from ai_jobs.localstack.feed import install_feed, remove_feed
from tests.realtime_socket import RealtimeSocket, add_user, open_websocket, run_in_thread

SECRET = "localstack-test-secret-with-more-than-32-characters"


@pytest.fixture(scope="module")
def feed_db(database_url: str) -> Iterator[str]:
    """A database of its own (the feed's trigger stays out of the shared one)."""
    name = f"ai_jobs_edge_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    url = psycopg.conninfo.make_conninfo(database_url, dbname=name)
    migrate(url)
    install_feed(url)
    install_feed(url)  # idempotent: `ai-jobs dev` runs it at every start
    yield url
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'drop database "{name}" with (force)')


@pytest.fixture(scope="module")
def edge(feed_db: str) -> Iterator[SupabaseEdge]:
    server = SupabaseEdge(feed_db, SECRET, access_log=False)
    server.start()
    yield server
    server.stop()


def _job(url: str, owner: uuid.UUID) -> uuid.UUID:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "insert into public.ai_jobs (user_id, job_type, input) values (%s, 'example.countdown', '{}') returning id",
            (owner,)).fetchone()
    assert row is not None
    return row[0]


def _sql(url: str, statement: str, *params: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


class Socket(RealtimeSocket):
    """Joins a job's postgres_changes channel, as the browser client does."""

    async def join(self, job_id: uuid.UUID, token: str, *, topic: str | None = None, private: bool = False) -> str:
        topic = topic or f"realtime:ai-jobs:{job_id}"
        binding = {"event": "*", "schema": "public", "table": "ai_jobs", "filter": f"id=eq.{job_id}"}
        await self.push(topic, "phx_join", {"config": {"broadcast": {"ack": False, "self": False},
                                                       "presence": {"key": "", "enabled": False},
                                                       "postgres_changes": [binding], "private": private},
                                            "access_token": token})
        return topic


async def _connect(session: aiohttp.ClientSession, edge: SupabaseEdge, apikey: str) -> Socket:
    return Socket(await open_websocket(session, edge.url, apikey))


def test_join_reply_then_system_message_then_changes_only_to_the_owner(edge: SupabaseEdge, feed_db: str) -> None:
    owner, other = add_user(feed_db), add_user(feed_db)
    job = _job(feed_db, owner)

    async def scenario() -> tuple[Socket, Socket]:
        async with aiohttp.ClientSession() as session:
            mine = await _connect(session, edge, mint_anon_key(SECRET))
            theirs = await _connect(session, edge, mint_anon_key(SECRET))
            for sock, user in ((mine, owner), (theirs, other)):
                await sock.join(job, mint_token(SECRET, user))
                await sock.wait_for(lambda f: f[3] == "system")
            _sql(feed_db, "update public.ai_jobs set progress = 40, progress_message = 'half' where id = %s", job)
            await mine.wait_for(lambda f: f[3] == "postgres_changes")
            await asyncio.sleep(0.5)  # the other user's socket had the same time to receive it
            # heartbeat, as realtime-js sends every 25 s
            ref = await mine.push("phoenix", "heartbeat", {}, join_ref=None)
            await mine.wait_for(lambda f: f[3] == "phx_reply" and f[1] == ref and f[2] == "phoenix")
            for sock in (mine, theirs):
                await sock.close()
            return mine, theirs

    mine, theirs = run_in_thread(scenario())
    # order as the server: the join reply (with the binding ids), then "Subscribed to PostgreSQL"
    reply, system = mine.frames[0], mine.frames[1]
    assert reply[3] == "phx_reply" and reply[4]["status"] == "ok"
    (bound,) = reply[4]["response"]["postgres_changes"]
    assert bound["filter"] == f"id=eq.{job}" and isinstance(bound["id"], int)
    assert system[3] == "system" and system[4] == {"extension": "postgres_changes", "status": "ok",
                                                   "message": "Subscribed to PostgreSQL", "channel": f"ai-jobs:{job}"}
    (change,) = mine.events("postgres_changes")
    assert change[4]["ids"] == [bound["id"]]
    data = change[4]["data"]
    assert data["type"] == "UPDATE" and data["table"] == "ai_jobs" and data["errors"] is None
    assert data["record"]["progress"] == 40 and data["record"]["progress_message"] == "half"
    assert "locked_by" not in data["record"], "a column authenticated may not select was sent"
    assert "locked_by" not in {c["name"] for c in data["columns"]}
    assert data["old_record"] == {"id": str(job)}
    # the other user joined the same topic and filter, and got the join and system message only
    assert theirs.events("phx_reply") and theirs.events("system")
    assert theirs.events("postgres_changes") == [], "another user's job change reached them"


def test_delete_carries_only_the_key_and_is_not_rls_filtered(edge: SupabaseEdge, feed_db: str) -> None:
    owner, other = add_user(feed_db), add_user(feed_db)
    job = _job(feed_db, owner)

    async def scenario() -> Socket:
        async with aiohttp.ClientSession() as session:
            theirs = await _connect(session, edge, mint_anon_key(SECRET))
            await theirs.join(job, mint_token(SECRET, other))
            await theirs.wait_for(lambda f: f[3] == "system")
            _sql(feed_db, "delete from public.ai_jobs where id = %s", job)
            await theirs.wait_for(lambda f: f[3] == "postgres_changes")
            await theirs.close()
            return theirs

    (change,) = run_in_thread(scenario()).events("postgres_changes")
    data = change[4]["data"]
    assert data["type"] == "DELETE" and data["old_record"] == {"id": str(job)} and "record" not in data


def test_a_record_over_1_mb_arrives_truncated_with_413(edge: SupabaseEdge, feed_db: str) -> None:
    owner = add_user(feed_db)
    job = _job(feed_db, owner)

    async def scenario() -> Socket:
        async with aiohttp.ClientSession() as session:
            mine = await _connect(session, edge, mint_anon_key(SECRET))
            await mine.join(job, mint_token(SECRET, owner))
            await mine.wait_for(lambda f: f[3] == "system")
            _sql(feed_db, "update public.ai_jobs set status = 'completed', progress = 100, finished_at = now(), result = %s::jsonb "
                          "where id = %s", json.dumps({"text": "x" * 1_100_000}), job)
            await mine.wait_for(lambda f: f[3] == "postgres_changes")
            await mine.close()
            return mine

    (change,) = run_in_thread(scenario()).events("postgres_changes")
    data = change[4]["data"]
    assert data["errors"] == ["Error 413: Payload Too Large"]
    assert "result" not in data["record"] and data["record"]["status"] == "completed"
    assert data["record"]["id"] == str(job)


def test_an_update_leaves_out_unchanged_toasted_values_as_on_the_server(edge: SupabaseEdge, feed_db: str) -> None:
    """wal2json skips unchanged out-of-line values and apply_rls.sql has only the key in the
    old tuple: an update that leaves a large (TOASTed) input alone arrives without it (no
    413); one that rewrites it, or a small value left alone, arrives with it."""
    owner = add_user(feed_db)
    job = _job(feed_db, owner)
    rng = random.Random(7)
    big = {"prompt": "".join(rng.choice(string.ascii_letters) for _ in range(6000))}  # ~6 kB even compressed
    small_but_long = {"prompt": "x" * 8000}  # compresses to ~100 bytes: stays in the row
    _sql(feed_db, "update public.ai_jobs set input = %s::jsonb, checkpoints = %s::jsonb where id = %s",
         json.dumps(big), json.dumps(small_but_long), job)

    async def scenario() -> Socket:
        async with aiohttp.ClientSession() as session:
            mine = await _connect(session, edge, mint_anon_key(SECRET))
            await mine.join(job, mint_token(SECRET, owner))
            await mine.wait_for(lambda f: f[3] == "system")
            _sql(feed_db, "update public.ai_jobs set progress = 30 where id = %s", job)
            await mine.wait_for(lambda f: f[3] == "postgres_changes")
            _sql(feed_db, "update public.ai_jobs set progress = 60, input = %s::jsonb where id = %s",
                 json.dumps({**big, "n": 2}), job)
            await mine.wait_for(lambda f: f[3] == "postgres_changes" and f[4]["data"]["record"].get("progress") == 60)
            await mine.close()
            return mine

    first, second = (c[4]["data"] for c in run_in_thread(scenario()).events("postgres_changes"))
    assert first["errors"] is None and first["record"]["progress"] == 30
    assert "input" not in first["record"], "an unchanged TOASTed value was sent"
    assert first["record"]["checkpoints"] == small_but_long  # compressed in the row: sent
    assert "input" in {c["name"] for c in first["columns"]}  # the column list is the table's
    assert first["old_record"] == {"id": str(job)}
    assert second["record"]["input"] == {**big, "n": 2}  # changed: sent


def test_a_uuid_filter_matches_in_either_case(edge: SupabaseEdge, feed_db: str) -> None:
    """The server casts a filter's value to the column's type (check_equality_op.sql):
    `id=eq.<UPPER-CASE UUID>` matches the row, whose id Postgres prints in lower case."""
    owner = add_user(feed_db)
    job = _job(feed_db, owner)

    async def scenario() -> Socket:
        async with aiohttp.ClientSession() as session:
            mine = await _connect(session, edge, mint_anon_key(SECRET))
            await mine.join(str(job).upper(), mint_token(SECRET, owner))  # type: ignore[arg-type]
            await mine.wait_for(lambda f: f[3] == "system")
            _sql(feed_db, "update public.ai_jobs set progress = 20 where id = %s", job)
            await mine.wait_for(lambda f: f[3] == "postgres_changes")
            await mine.close()
            return mine

    (change,) = run_in_thread(scenario()).events("postgres_changes")
    assert change[4]["data"]["record"]["id"] == str(job) and change[4]["data"]["record"]["progress"] == 20


def test_with_public_access_off_only_private_joins_and_postgres_changes_on_them(feed_db: str) -> None:
    """private_only (the dashboard's "Allow public access" off) refuses a public join with
    the server's PrivateOnly reason; the job's private topic, joined by its owner with a
    postgres_changes binding, gets the subscription and the changes; another user's
    private join is refused by the policy."""
    owner, other = add_user(feed_db), add_user(feed_db)
    job = _job(feed_db, owner)
    edge = SupabaseEdge(feed_db, SECRET, access_log=False, private_only=True)
    edge.start()

    async def scenario() -> tuple[Socket, Socket]:
        async with aiohttp.ClientSession() as session:
            mine = await _connect(session, edge, mint_anon_key(SECRET))
            theirs = await _connect(session, edge, mint_anon_key(SECRET))
            await mine.join(job, mint_token(SECRET, owner))
            await mine.wait_for(lambda f: f[3] == "phx_reply" and f[2] == f"realtime:ai-jobs:{job}")
            private_topic = f"realtime:ai-jobs-live:{job}"
            await mine.join(job, mint_token(SECRET, owner), topic=private_topic, private=True)
            await theirs.join(job, mint_token(SECRET, other), topic=private_topic, private=True)
            await mine.wait_for(lambda f: f[3] == "system" and f[2] == private_topic)
            await theirs.wait_for(lambda f: f[3] == "phx_reply")
            _sql(feed_db, "update public.ai_jobs set progress = 70 where id = %s", job)
            await mine.wait_for(lambda f: f[3] == "postgres_changes")
            for sock in (mine, theirs):
                await sock.close()
            return mine, theirs

    try:
        mine, theirs = run_in_thread(scenario())
    finally:
        edge.stop()
    public_reply, private_reply = mine.events("phx_reply")[:2]
    assert public_reply[4] == {"status": "error",
                               "response": {"reason": "PrivateOnly: This project only allows private channels"}}
    assert private_reply[4]["status"] == "ok" and private_reply[4]["response"]["postgres_changes"]
    assert mine.events("system")[0][4]["message"] == "Subscribed to PostgreSQL"
    (change,) = mine.events("postgres_changes")
    assert change[2] == f"realtime:ai-jobs-live:{job}" and change[4]["data"]["record"]["progress"] == 70
    (refused,) = theirs.events("phx_reply")
    assert refused[4]["response"]["reason"] == (
        f"Unauthorized: You do not have permissions to read from this Channel topic: ai-jobs-live:{job}")


def test_replication_ready_is_announced_after_the_join_reply(edge: SupabaseEdge, feed_db: str) -> None:
    """A join with config.broadcast.replication_ready gets the server's system message
    "Replication connection established" after the join reply; one without does not."""
    owner = add_user(feed_db)
    job = _job(feed_db, owner)
    topic = f"realtime:ai-jobs-live:{job}"

    async def scenario() -> tuple[Socket, Socket]:
        async with aiohttp.ClientSession() as session:
            asking = await _connect(session, edge, mint_anon_key(SECRET))
            plain = await _connect(session, edge, mint_anon_key(SECRET))
            for sock, ready in ((asking, True), (plain, False)):
                await sock.push(topic, "phx_join", {"config": {"broadcast": {"ack": False, "self": False, "replication_ready": ready},
                                                               "presence": {"key": "", "enabled": False},
                                                               "postgres_changes": [], "private": True},
                                                    "access_token": mint_token(SECRET, owner)})
            await asking.wait_for(lambda f: f[3] == "system")
            await plain.wait_for(lambda f: f[3] == "phx_reply")
            await asyncio.sleep(0.3)
            for sock in (asking, plain):
                await sock.close()
            return asking, plain

    asking, plain = run_in_thread(scenario())
    assert [f[3] for f in asking.frames[:2]] == ["phx_reply", "system"]
    assert asking.frames[0][4]["status"] == "ok"
    assert asking.frames[1][4] == {"extension": "system", "status": "ok", "message": "Replication connection established",
                                   "channel": f"ai-jobs-live:{job}"}
    assert plain.events("system") == []


def test_a_change_before_the_subscription_is_live_is_missed_as_on_the_server(feed_db: str) -> None:
    """Between the join reply and "Subscribed to PostgreSQL" nothing is delivered:
    a client must re-read after the system message."""
    owner = add_user(feed_db)
    job = _job(feed_db, owner)
    slow = SupabaseEdge(feed_db, SECRET, subscribe_delay=1.0, access_log=False)
    slow.start()

    async def scenario() -> Socket:
        async with aiohttp.ClientSession() as session:
            mine = await _connect(session, slow, mint_anon_key(SECRET))
            await mine.join(job, mint_token(SECRET, owner))
            await mine.wait_for(lambda f: f[3] == "phx_reply")
            _sql(feed_db, "update public.ai_jobs set progress_message = 'early' where id = %s", job)
            await mine.wait_for(lambda f: f[3] == "system", timeout=5)
            _sql(feed_db, "update public.ai_jobs set progress_message = 'late' where id = %s", job)
            await mine.wait_for(lambda f: f[3] == "postgres_changes")
            await asyncio.sleep(0.3)
            await mine.close()
            return mine

    try:
        mine = run_in_thread(scenario())
    finally:
        slow.stop()
    messages = [f[4]["data"]["record"]["progress_message"] for f in mine.events("postgres_changes")]
    assert messages == ["late"]


def test_an_expired_token_gets_a_system_error_then_phx_close(edge: SupabaseEdge, feed_db: str) -> None:
    owner = add_user(feed_db)
    job = _job(feed_db, owner)

    async def scenario() -> tuple[Socket, Socket, Socket]:
        async with aiohttp.ClientSession() as session:
            short = await _connect(session, edge, mint_anon_key(SECRET))
            topic = await short.join(job, mint_token(SECRET, owner, ttl_seconds=2))
            await short.wait_for(lambda f: f[3] == "system")
            await short.wait_for(lambda f: f[3] == "phx_close", timeout=6)
            # an access_token push with an expired token closes the channel too
            pushed = await _connect(session, edge, mint_anon_key(SECRET))
            await pushed.join(job, mint_token(SECRET, owner))
            await pushed.wait_for(lambda f: f[3] == "system")
            await pushed.push(topic, "access_token", {"access_token": mint_token(SECRET, owner, ttl_seconds=-5)})
            await pushed.wait_for(lambda f: f[3] == "phx_close")
            # a join with an expired token is refused
            late = await _connect(session, edge, mint_anon_key(SECRET))
            await late.join(job, mint_token(SECRET, owner, ttl_seconds=-5))
            await late.wait_for(lambda f: f[3] == "phx_reply")
            _sql(feed_db, "update public.ai_jobs set progress_message = 'after' where id = %s", job)
            await asyncio.sleep(0.4)
            for sock in (short, pushed, late):
                await sock.close()
            return short, pushed, late

    short, pushed, late = run_in_thread(scenario())
    for sock in (short, pushed):
        errors = [f for f in sock.events("system") if f[4]["extension"] == "system"]
        assert errors and errors[0][4]["status"] == "error" and "Token has expired" in errors[0][4]["message"]
        assert sock.frames.index(errors[0]) < sock.frames.index(sock.events("phx_close")[0])
        assert sock.events("postgres_changes") == []  # closed: nothing more
    reply = late.events("phx_reply")[0][4]
    assert reply["status"] == "error" and "Token has expired" in reply["response"]["reason"]


def test_token_times_are_checked_as_the_api_checks_them() -> None:
    """The edge and the API's TokenVerifier agree: `exp` has no leeway, `nbf`/`iat`
    may be up to 30 s ahead (the issuer's clock)."""
    import time

    import jwt

    from ai_jobs.localstack.edge import TokenError, verify_token

    now = int(time.time())

    def token(**claims: int) -> str:
        return jwt.encode({"sub": str(uuid.uuid4()), "role": "authenticated", "exp": now + 60, **claims}, SECRET,
                          algorithm="HS256")

    with pytest.raises(TokenError) as err:
        verify_token(token(exp=now - 1), SECRET)
    assert err.value.expired
    assert verify_token(token(nbf=now + 10, iat=now + 10), SECRET)["role"] == "authenticated"
    for too_far in ({"nbf": now + 90}, {"iat": now + 90}):
        with pytest.raises(TokenError):
            verify_token(token(**too_far), SECRET)


def test_a_bad_apikey_is_refused_and_leave_is_answered(edge: SupabaseEdge, feed_db: str) -> None:
    owner = add_user(feed_db)
    job = _job(feed_db, owner)

    async def scenario() -> tuple[int, Socket]:
        async with aiohttp.ClientSession() as session:
            url = f"{edge.url.replace('http', 'ws')}/realtime/v1/websocket?apikey=not-a-jwt&vsn=2.0.0"
            try:
                await session.ws_connect(url)
                status = 101
            except aiohttp.WSServerHandshakeError as exc:
                status = exc.status
            sock = await _connect(session, edge, mint_anon_key(SECRET))
            topic = await sock.join(job, mint_token(SECRET, owner))
            await sock.wait_for(lambda f: f[3] == "system")
            ref = await sock.push(topic, "phx_leave", {})
            await sock.wait_for(lambda f: f[3] == "phx_reply" and f[1] == ref)
            _sql(feed_db, "update public.ai_jobs set progress_message = 'after leave' where id = %s", job)
            await asyncio.sleep(0.4)
            await sock.close()
            return status, sock

    status, sock = run_in_thread(scenario())
    assert status == 403
    assert sock.events("postgres_changes") == []


def test_rest_read_runs_as_the_caller_with_rls(edge: SupabaseEdge, feed_db: str) -> None:
    owner, other = add_user(feed_db), add_user(feed_db)
    job = _job(feed_db, owner)
    anon = mint_anon_key(SECRET)

    async def get(token: str | None, query: str, accept: str = "application/json") -> tuple[int, Any, dict[str, str]]:
        headers = {"apikey": anon, "Accept": accept}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as session, session.get(f"{edge.url}/rest/v1/ai_jobs?{query}",
                                                                   headers=headers) as response:
            return response.status, await response.json(), dict(response.headers)

    async def preflight() -> tuple[int, dict[str, str]]:
        async with aiohttp.ClientSession() as session, session.options(
            f"{edge.url}/rest/v1/ai_jobs", headers={"Origin": "http://127.0.0.1:9", "Access-Control-Request-Method": "GET",
                                                    "Access-Control-Request-Headers": "apikey,authorization,x-client-info,accept-profile"}) as response:
            return response.status, dict(response.headers)

    before = edge.rest_reads[str(job)]
    status, body, headers = run_in_thread(get(mint_token(SECRET, owner), f"select=id,status,progress&id=eq.{job}"))
    assert status == 200 and body == [{"id": str(job), "status": "pending", "progress": 0}]
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert run_in_thread(get(mint_token(SECRET, other), f"select=id,status&id=eq.{job}"))[:2] == (200, [])
    assert edge.rest_reads[str(job)] - before == 2
    # .single(): one object, or 406
    status, body, _ = run_in_thread(get(mint_token(SECRET, owner), f"select=id&id=eq.{job}", "application/vnd.pgrst.object+json"))
    assert (status, body) == (200, {"id": str(job)})
    status, body, _ = run_in_thread(get(mint_token(SECRET, other), f"select=id&id=eq.{job}", "application/vnd.pgrst.object+json"))
    assert status == 406 and body["code"] == "PGRST116"
    # a column authenticated may not select
    status, body, _ = run_in_thread(get(mint_token(SECRET, owner), f"select=id,locked_by&id=eq.{job}"))
    assert status == 403 and body["code"] == "42501"
    # bad and expired tokens: PostgREST's 401s
    status, body, _ = run_in_thread(get(mint_token("another-secret-of-at-least-32-characters!!", owner), f"id=eq.{job}"))
    assert status == 401 and body["code"] == "PGRST301"
    status, body, _ = run_in_thread(get(mint_token(SECRET, owner, ttl_seconds=-5), f"id=eq.{job}"))
    assert status == 401 and body["code"] == "PGRST303" and body["message"] == "JWT expired"
    # anon (no user token) may not read the table at all
    status, body, _ = run_in_thread(get(None, f"select=id&id=eq.{job}"))
    assert status == 401 and body["code"] == "42501"
    # malformed input: 400, never a 500
    assert run_in_thread(get(mint_token(SECRET, owner), "select=id&id=eq.not-a-uuid"))[0] == 400
    assert run_in_thread(get(mint_token(SECRET, owner), "select=id;drop&id=eq.x"))[0] == 400
    assert run_in_thread(get(mint_token(SECRET, owner), "select=id&id=like.x"))[0] == 400
    status, headers = run_in_thread(preflight())
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    assert "accept-profile" in headers["Access-Control-Allow-Headers"]


def test_the_feed_is_dev_only_and_removable(feed_db: str, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:  # the shared, migrated database has no feed
        assert conn.execute("select to_regnamespace('ai_jobs_dev')").fetchone() == (None,)
    name = f"ai_jobs_feed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    url = psycopg.conninfo.make_conninfo(database_url, dbname=name)
    try:
        migrate(url)
        install_feed(url)
        remove_feed(url)
        with psycopg.connect(url) as conn:
            assert conn.execute("select to_regnamespace('ai_jobs_dev')").fetchone() == (None,)
            assert conn.execute("select count(*) from pg_trigger where tgname = 'ai_jobs_dev_capture'").fetchone() == (0,)
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute(f'drop database "{name}" with (force)')
