"""Shared fixtures: a real PostgreSQL (embedded via pgserver, or DATABASE_URL)
migrated with our migrations, and both store adapters over it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import psycopg
import pytest
import respx

from ai_jobs.database.migrations import migrate
from ai_jobs.store.base import JobStore
from ai_jobs.store.postgres import PostgresStore
from tests.postgrest_emulator import PostgrestEmulator

# The suite (and every server or worker it starts) uses the demo job types; tests of a
# production deployment pass demo=False or unset it.
os.environ.setdefault("AI_JOBS_DEMO_JOB_TYPES", "1")

SUPABASE_URL = "https://test-project.supabase.co"
JWT_SECRET = "test-jwt-secret-with-at-least-32-characters!"


def unused_port() -> int:
    """A loopback port nothing listens on right now: connections to it are refused
    (and a server may bind it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_token(role: str, sub: str | None = None, **extra: object) -> str:
    claims: dict[str, object] = {"role": role, "iss": "supabase", "iat": int(time.time())}
    if sub:
        claims["sub"] = sub
    claims.update(extra)
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def user_token(user_id: uuid.UUID, **overrides: object) -> str:
    """A Supabase-style access token for a signed-in user."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": str(user_id), "role": "authenticated", "aud": "authenticated", "iat": now, "exp": now + 3600,
    }
    claims.update(overrides)
    secret = str(claims.pop("_secret", JWT_SECRET))
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, algorithm="HS256")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    external = os.environ.get("DATABASE_URL")
    if external:
        name = f"ai_jobs_test_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(external, autocommit=True) as admin:
            admin.execute(f'create database "{name}"')
        url = psycopg.conninfo.make_conninfo(external, dbname=name)
        migrate(url)
        yield url
        with psycopg.connect(external, autocommit=True) as admin:
            admin.execute(f'drop database "{name}" with (force)')
        return
    import pgserver

    # Short path: the server's unix socket lives in the data directory.
    pgdata = Path(tmp_path_factory.mktemp("pg")) / "data"
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    url = server.get_uri()
    migrate(url)
    yield url
    server.cleanup()


@pytest.fixture()
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """An owner connection for test setup and inspection, on an empty queue."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("delete from public.ai_jobs")
        conn.execute("delete from auth.users")
        yield conn


@pytest.fixture()
def make_user(db: psycopg.Connection) -> Callable[[], uuid.UUID]:
    def _make() -> uuid.UUID:
        user_id = uuid.uuid4()
        db.execute("insert into auth.users (id, email) values (%s, %s)", (user_id, f"{user_id.hex[:8]}@example.com"))
        return user_id

    return _make


@pytest.fixture(scope="session")
def pg_store(database_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(database_url, max_size=12)
    yield store
    store.close()


@pytest.fixture(scope="session")
def postgrest(database_url: str) -> Iterator[PostgrestEmulator]:
    emulator = PostgrestEmulator(database_url, JWT_SECRET)
    yield emulator
    emulator.close()


@pytest.fixture()
def supabase_store(postgrest: PostgrestEmulator) -> Iterator[JobStore]:
    from ai_jobs.store.supabase import SupabaseStore

    with respx.mock(assert_all_called=False) as router:
        route = router.post(url__startswith=f"{SUPABASE_URL}/rest/v1/rpc/").mock(side_effect=postgrest)
        store = SupabaseStore(SUPABASE_URL, make_token("service_role"))
        yield store
        assert route.called, "SupabaseStore made no HTTP call"


@pytest.fixture(params=["postgres", "supabase"])
def store(request: pytest.FixtureRequest, db: psycopg.Connection) -> JobStore:
    """The store contract suite runs once per adapter."""
    name = "pg_store" if request.param == "postgres" else "supabase_store"
    return request.getfixturevalue(name)
