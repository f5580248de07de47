"""RLS and privileges, tested the way PostgREST and Realtime use them:
`set local role` plus request.jwt.claims inside a transaction, never as owner."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import respx

from ai_jobs.errors import StoreUnavailableError
from ai_jobs.models import NewJob
from ai_jobs.store.postgres import PostgresStore
from tests.conftest import SUPABASE_URL, make_token
from tests.rls import act_as


@contextmanager
def as_role(database_url: str, role: str, sub: uuid.UUID | None = None) -> Iterator[psycopg.Connection]:
    """A transaction under `role` with Supabase-style JWT claims, as PostgREST opens it."""
    claims = {"role": role, **({"sub": str(sub)} if sub else {})}
    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            act_as(conn, claims)
            yield conn


@pytest.fixture()
def two_users_with_jobs(pg_store: PostgresStore, make_user) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    alice, bob = make_user(), make_user()
    job = pg_store.enqueue(NewJob(user_id=alice, job_type="example.countdown")).job
    pg_store.enqueue(NewJob(user_id=bob, job_type="example.countdown"))
    return alice, bob, job.id


def test_owner_reads_only_own_rows(database_url: str, two_users_with_jobs) -> None:
    alice, bob, alice_job = two_users_with_jobs
    with as_role(database_url, "authenticated", alice) as conn:
        assert conn.execute("select auth.uid()").fetchone()[0] == alice
        rows = conn.execute("select id, user_id from public.ai_jobs").fetchall()
        assert rows == [(alice_job, alice)]
    with as_role(database_url, "authenticated", bob) as conn:
        assert conn.execute("select count(*) from public.ai_jobs where id = %s", (alice_job,)).fetchone()[0] == 0
        assert conn.execute("select count(*) from public.ai_jobs where user_id = %s", (alice,)).fetchone()[0] == 0


def test_authenticated_without_sub_sees_nothing(database_url: str, two_users_with_jobs) -> None:
    with as_role(database_url, "authenticated") as conn:
        assert conn.execute("select count(*) from public.ai_jobs").fetchone()[0] == 0


@pytest.mark.parametrize(
    "statement",
    [
        "insert into public.ai_jobs (user_id, job_type) values ('{bob}', 'example.countdown')",
        "update public.ai_jobs set status = 'cancelled' where id = '{job}'",
        "update public.ai_jobs set progress = 1 where user_id = '{bob}'",
        "delete from public.ai_jobs where id = '{job}'",
        "delete from public.ai_jobs where user_id = '{bob}'",
    ],
)
def test_authenticated_cannot_write_directly(database_url: str, two_users_with_jobs, statement: str) -> None:
    alice, bob, alice_job = two_users_with_jobs
    # neither someone else's rows nor their own
    for sub in (bob, alice):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with as_role(database_url, "authenticated", sub) as conn:
                conn.execute(statement.format(bob=sub, job=alice_job))


def test_anon_sees_nothing(database_url: str, two_users_with_jobs) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with as_role(database_url, "anon") as conn:
            conn.execute("select * from public.ai_jobs")
    for view in ("ai_jobs_queue_depth", "ai_jobs_stats_24h"):
        for role in ("anon", "authenticated"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with as_role(database_url, role, uuid.uuid4()) as conn:
                    conn.execute(f"select * from public.{view}")


def test_service_role_bypasses_rls(database_url: str, two_users_with_jobs) -> None:
    with as_role(database_url, "service_role") as conn:
        assert conn.execute("select count(*) from public.ai_jobs").fetchone()[0] == 2


def test_no_worker_function_executable_by_browser_roles(db: psycopg.Connection) -> None:
    functions = db.execute(
        """
        select p.oid::regprocedure::text,
               has_function_privilege('anon', p.oid, 'execute'),
               has_function_privilege('authenticated', p.oid, 'execute'),
               has_function_privilege('service_role', p.oid, 'execute')
        from pg_proc p where p.pronamespace = 'public'::regnamespace and p.proname like 'ai\\_jobs\\_%'
        """
    ).fetchall()
    assert len(functions) >= 20
    exposed = [f for f, anon, auth, _ in functions if anon or auth]
    assert exposed == []
    assert all(service for *_, service in functions)


def test_no_sequence_usable_by_browser_roles(database_url: str, db: psycopg.Connection) -> None:
    """Supabase's default privileges give anon and authenticated ALL on new sequences in
    public (the identity column of ai_jobs_spend makes one): none may read or move them."""
    sequences = db.execute(
        """
        select c.oid::regclass::text, r.rolname,
               has_sequence_privilege(r.rolname, c.oid, 'usage'),
               has_sequence_privilege(r.rolname, c.oid, 'select'),
               has_sequence_privilege(r.rolname, c.oid, 'update')
        from pg_class c cross join (values ('anon'), ('authenticated')) r(rolname)
        where c.relnamespace = 'public'::regnamespace and c.relkind = 'S'
        """
    ).fetchall()
    assert "ai_jobs_spend_id_seq" in {name for name, *_ in sequences}
    assert [s for s in sequences if any(s[2:])] == []
    for role in ("anon", "authenticated"):
        for statement in ("select nextval('public.ai_jobs_spend_id_seq')",
                          "select setval('public.ai_jobs_spend_id_seq', 1, false)",
                          "select last_value from public.ai_jobs_spend_id_seq"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with as_role(database_url, role, uuid.uuid4()) as conn:
                    conn.execute(statement)


def test_user_token_cannot_call_the_api_over_rest(postgrest, make_user) -> None:
    """A browser holding its own JWT gets 403 from PostgREST for every worker function."""
    from ai_jobs.store.supabase import SupabaseStore

    user = make_user()
    with respx.mock(assert_all_called=True) as router:
        router.post(url__startswith=f"{SUPABASE_URL}/rest/v1/rpc/").mock(side_effect=postgrest)
        as_user = SupabaseStore(SUPABASE_URL, make_token("authenticated", str(user)))
        with pytest.raises(StoreUnavailableError, match="42501"):
            as_user.enqueue(NewJob(user_id=user, job_type="example.countdown"))
        with pytest.raises(StoreUnavailableError, match="42501"):
            as_user.claim("sneaky")


# -- Supabase Security / Performance Advisor lints, as catalog queries ------------------


def test_advisor_rls_enabled_on_public_tables(db: psycopg.Connection) -> None:
    rows = db.execute(
        "select relname from pg_class where relnamespace = 'public'::regnamespace "
        "and relkind = 'r' and not relrowsecurity"
    ).fetchall()
    assert rows == []


def test_advisor_no_permissive_true_policy(db: psycopg.Connection) -> None:
    policies = db.execute("select policyname, qual, with_check from pg_policies where schemaname = 'public'").fetchall()
    assert policies, "expected the owner select policy"
    for name, qual, check in policies:
        assert qual not in ("true", None), name
        assert check != "true", name


def test_advisor_auth_uid_is_initplan_wrapped(db: psycopg.Connection) -> None:
    [(qual,)] = db.execute(
        "select qual from pg_policies where schemaname = 'public' and tablename = 'ai_jobs'"
    ).fetchall()
    assert "auth.uid()" in qual
    assert "SELECT auth.uid()" in qual  # evaluated once per statement, not per row


def test_advisor_function_search_path_pinned(db: psycopg.Connection) -> None:
    mutable = db.execute(
        """
        select p.oid::regprocedure::text from pg_proc p
        where p.pronamespace = 'public'::regnamespace
          and not exists (select 1 from unnest(coalesce(p.proconfig, '{}')) c where c like 'search_path=%')
        """
    ).fetchall()
    assert mutable == []


def test_advisor_no_security_definer_exposed(db: psycopg.Connection) -> None:
    rows = db.execute(
        """
        select p.oid::regprocedure::text from pg_proc p
        where p.pronamespace = 'public'::regnamespace and p.prosecdef
          and (has_function_privilege('anon', p.oid, 'execute')
               or has_function_privilege('authenticated', p.oid, 'execute'))
        """
    ).fetchall()
    assert rows == []


def test_advisor_views_are_security_invoker(db: psycopg.Connection) -> None:
    views = db.execute(
        "select relname, coalesce(reloptions, '{}') from pg_class "
        "where relnamespace = 'public'::regnamespace and relkind = 'v'"
    ).fetchall()
    assert views
    for name, options in views:
        assert "security_invoker=true" in options, name


def test_advisor_foreign_keys_indexed(db: psycopg.Connection) -> None:
    unindexed = db.execute(
        """
        select c.conname from pg_constraint c
        where c.contype = 'f' and c.connamespace = 'public'::regnamespace
          and not exists (
            select 1 from pg_index i
            where i.indrelid = c.conrelid
              and (i.indkey::int2[])[0:array_length(c.conkey, 1) - 1] = c.conkey
          )
        """
    ).fetchall()
    assert unindexed == []
    assert db.execute(
        "select count(*) from pg_constraint where contype = 'f' and conrelid = 'public.ai_jobs'::regclass"
    ).fetchone()[0] == 2


def test_a_reaped_jobs_error_does_not_name_the_worker(database_url: str, db: psycopg.Connection,
                                                      pg_store: PostgresStore, make_user) -> None:
    """locked_by (worker host names and process ids) is hidden from owners by a column
    grant and left out of the API's job; the reaper used to copy it into error.message
    ('worker <locked_by> stopped renewing its lease'), which the owner reads through the
    API, RLS and Realtime. It now goes to the database's log only."""
    from ai_jobs.http.app import create_app
    from ai_jobs.http.services import Services
    from ai_jobs.registry import load_job_modules
    from ai_jobs.settings import Settings
    from tests.conftest import JWT_SECRET, user_token

    worker = "ip-10-0-3-17.internal:48213:9f1c2ab0"
    user = make_user()
    jobs = [pg_store.enqueue(NewJob(user_id=user, job_type="example.countdown", max_attempts=m)).job for m in (3, 1)]
    for job in jobs:
        pg_store.claim(worker, job_id=job.id)
    db.execute("update public.ai_jobs set lease_expires_at = now() - interval '1 second' where user_id = %s", (user,))
    logged: list[str] = []
    db.add_notice_handler(lambda diag: logged.append(diag.message_primary or ""))
    db.execute("set client_min_messages = log")  # what the server log gets; clients get nothing by default
    try:
        reaped = db.execute("select id, status from public.ai_jobs_reap_v1(10)").fetchall()
    finally:
        db.execute("reset client_min_messages")
    assert sorted(status for _, status in reaped) == ["failed", "pending"]

    messages = {"pending": "the worker stopped renewing its lease (attempt 1 of 3)",
                "failed": "the worker stopped renewing its lease (attempt 1 of 1)"}
    with as_role(database_url, "authenticated", user) as conn:  # RLS, as PostgREST and Realtime read it
        rows = conn.execute("select status, error from public.ai_jobs where user_id = %s", (user,)).fetchall()
    assert {status: error["message"] for status, error in rows} == messages
    assert all(error["code"] == "lease_expired" and worker not in str(error) for _, error in rows)
    services = Services(settings=Settings(store="postgres", database_url=database_url, jwt_secret=JWT_SECRET),
                        registry=load_job_modules(demo=True))
    try:
        client = create_app(services).test_client()
        for job in jobs:
            got = client.get(f"/api/jobs/{job.id}", headers={"Authorization": f"Bearer {user_token(user)}"})
            assert got.status_code == 200 and worker not in got.get_data(as_text=True)
            assert got.json["error"]["message"] in messages.values()
    finally:
        services.close()
    assert len([m for m in logged if worker in m]) == 2  # operators still learn which worker it was
