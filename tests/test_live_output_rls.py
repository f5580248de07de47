"""Realtime Authorization for the live-output topic `ai-jobs-live:<job id>`, checked as
Supabase Realtime checks it, in a PostgreSQL 15 cluster shaped like Supabase
(tests/supabase_cluster.py) where the migrations run as the non-superuser `postgres`.

The `realtime` schema is created first as Supabase Realtime's own tenant migrations
leave it (github.com/supabase/realtime, lib/realtime/tenants/repo/migrations/):
`realtime.messages` partitioned by `inserted_at` (20241030150047_messages_partitioning,
20241108114728_messages_using_uuid, 20260514120000_add_binary_payload_to_messages),
RLS enabled, SELECT/INSERT/UPDATE granted to postgres and the API roles, owned by
`supabase_realtime_admin`, which `postgres` is a member of
(20240401105812_create_realtime_admin_and_move_ownership); `realtime.topic()`
(20240523004032_redefine_authorization_tables); `realtime.send` as of
20260605120000_rename_broadcast_send_warning.

The join check is Realtime's (lib/realtime/tenants/authorization.ex,
`get_read_policies_for_connection`): in one transaction the server inserts a message
for the topic per extension, then sets `role`, `realtime.topic`, `request.jwt.claims`
and `request.jwt.claim.sub/role` (`set_conn_config`), selects those ids back
(`check_read_policies`) and rolls back. The write check inserts a message as the
user (`check_write_policies`); insufficient_privilege means "cannot send".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ai_jobs.database.migrations import MigrationReport, migrate
from tests.supabase_cluster import SupabaseCluster, destroy_cluster, pg_cron_available, start_cluster

REALTIME_SQL = """
do $$ begin
  if not exists (select from pg_roles where rolname = 'supabase_realtime_admin') then
    create role supabase_realtime_admin with noinherit nologin noreplication;
  end if;
end $$;
create schema if not exists realtime;
grant usage on schema realtime to postgres, anon, authenticated, service_role;
grant all privileges on schema realtime to supabase_realtime_admin;
create table if not exists realtime.messages (
  topic text not null,
  extension text not null,
  payload jsonb,
  event text,
  private boolean default false,
  updated_at timestamp not null default now(),
  inserted_at timestamp not null default now(),
  id uuid not null default gen_random_uuid(),
  binary_payload bytea,
  primary key (id, inserted_at)
) partition by range (inserted_at);
alter table realtime.messages enable row level security;
grant select, insert, update on realtime.messages to postgres, anon, authenticated, service_role;
alter table realtime.messages owner to supabase_realtime_admin;
create or replace function realtime.topic() returns text as $$
select nullif(current_setting('realtime.topic', true), '')::text;
$$ language sql stable;
alter function realtime.topic() owner to supabase_realtime_admin;
create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void as $$
declare
  generated_id uuid;
  final_payload jsonb;
begin
  begin
    generated_id := gen_random_uuid();
    if payload ? 'id' then final_payload := payload;
    else final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
    end if;
    execute format('SET LOCAL realtime.topic TO %L', topic);
    insert into realtime.messages (id, payload, event, topic, private, extension)
    values (generated_id, final_payload, event, topic, private, 'broadcast');
  exception when others then
    raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
  end;
end;
$$ language plpgsql;
alter function realtime.send(jsonb, text, text, boolean) owner to supabase_realtime_admin;
grant execute on all functions in schema realtime to postgres, anon, authenticated, service_role;
grant supabase_realtime_admin to postgres;
"""

# Realtime's janitor creates daily partitions ahead; one covering now is enough here.
PARTITION_SQL = """
create table if not exists realtime.messages_live_test partition of realtime.messages
  for values from (now() - interval '2 days') to (now() + interval '2 days');
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[SupabaseCluster, MigrationReport]]:
    if not pg_cron_available():
        pytest.skip("the Supabase-shaped cluster needs PostgreSQL 15 and pg_cron (see tests/test_wakeups.py)")
    instance = start_cluster()
    try:
        instance.prepare_database("postgres", pg_cron=False)
        with instance.admin() as conn:
            conn.execute(REALTIME_SQL)
            conn.execute(PARTITION_SQL)
        report = migrate(instance.url("postgres"))  # as postgres, who is not a superuser
        yield instance, report
    finally:
        destroy_cluster(instance)


@pytest.fixture()
def admin(cluster: tuple[SupabaseCluster, MigrationReport]) -> Iterator[psycopg.Connection]:
    with cluster[0].admin() as conn:
        yield conn


def _user(admin: psycopg.Connection) -> uuid.UUID:
    return admin.execute("insert into auth.users (email) values (%s) returning id",
                         (f"{uuid.uuid4().hex}@example.com",)).fetchone()[0]


def _job(admin: psycopg.Connection, owner: uuid.UUID) -> uuid.UUID:
    return admin.execute(
        "insert into public.ai_jobs (user_id, job_type, input) values (%s, 'ai.generate', '{}') returning id",
        (owner,)).fetchone()[0]


def _claims(role: str, sub: uuid.UUID | None = None) -> dict[str, Any]:
    claims: dict[str, Any] = {"role": role, "exp": 9999999999}
    if sub is not None:
        claims["sub"] = str(sub)
    return claims


def _set_conn_config(conn: psycopg.Connection, topic: str, claims: dict[str, Any]) -> None:
    """authorization.ex `set_conn_config`, verbatim in what it sets."""
    conn.execute(
        "select set_config('role', %s, true), set_config('realtime.topic', %s, true),"
        " set_config('request.jwt.claims', %s, true), set_config('request.jwt.claim.sub', %s, true),"
        " set_config('request.jwt.claim.role', %s, true), set_config('request.headers', '{}', true)",
        (claims["role"], topic, json.dumps(claims), claims.get("sub") or "", claims["role"]))


def can_read(cluster: SupabaseCluster, topic: str, claims: dict[str, Any]) -> dict[str, bool]:
    """Realtime's read check for a private channel join, per extension."""
    with psycopg.connect(cluster.url("postgres"), autocommit=False) as conn:
        ids = {ext: uuid.uuid4() for ext in ("broadcast", "presence")}
        for ext, ident in ids.items():
            conn.execute("insert into realtime.messages (id, topic, extension) values (%s, %s, %s)", (ident, topic, ext))
        _set_conn_config(conn, topic, claims)
        found = {r[0] for r in conn.execute("select id from realtime.messages where id = any(%s)",
                                            (list(ids.values()),)).fetchall()}
        conn.rollback()
    return {ext: ident in found for ext, ident in ids.items()}


def can_write(cluster: SupabaseCluster, topic: str, claims: dict[str, Any]) -> bool:
    """Realtime's write check (`check_write_policies`): insert as the user."""
    with psycopg.connect(cluster.url("postgres"), autocommit=False) as conn:
        _set_conn_config(conn, topic, claims)
        try:
            conn.execute("insert into realtime.messages (topic, extension, event, payload, private) "
                         "values (%s, 'broadcast', 'text', '{}', true)", (topic,))
        except psycopg.errors.InsufficientPrivilege:
            return False
        finally:
            conn.rollback()
    return True


def test_policy_installed_by_postgres(cluster: tuple[SupabaseCluster, MigrationReport], admin: psycopg.Connection) -> None:
    rows = admin.execute("select policyname, cmd, roles::text from pg_policies "
                         "where schemaname = 'realtime' and tablename = 'messages'").fetchall()
    assert rows == [("ai_jobs_live_owner_receive", "SELECT", "{authenticated}")]
    # applying again changes nothing and keeps exactly one policy
    migrate(cluster[0].url("postgres"))
    again = admin.execute("select policyname, cmd, roles::text, qual from pg_policies "
                          "where schemaname = 'realtime' and tablename = 'messages'").fetchall()
    assert [r[:3] for r in again] == rows


def test_only_the_owner_may_receive(cluster: tuple[SupabaseCluster, MigrationReport], admin: psycopg.Connection) -> None:
    instance = cluster[0]
    owner, other = _user(admin), _user(admin)
    job = _job(admin, owner)
    topic = f"ai-jobs-live:{job}"
    assert can_read(instance, topic, _claims("authenticated", owner)) == {"broadcast": True, "presence": False}
    assert can_read(instance, topic, _claims("authenticated", other)) == {"broadcast": False, "presence": False}
    assert can_read(instance, topic, _claims("anon")) == {"broadcast": False, "presence": False}
    # a token without a sub, a malformed or foreign topic: nothing, and no error
    assert can_read(instance, topic, _claims("authenticated")) == {"broadcast": False, "presence": False}
    for bad in (f"ai-jobs-live:{job}x", f"ai-jobs-live:{str(job).upper()}", "ai-jobs-live:not-a-uuid", str(job), f"ai-jobs:{job}", f"other:{job}"):
        assert can_read(instance, bad, _claims("authenticated", owner))["broadcast"] is False, bad
    # another user's job id under the owner's token
    assert can_read(instance, f"ai-jobs-live:{_job(admin, other)}", _claims("authenticated", owner))["broadcast"] is False


def test_no_browser_can_send(cluster: tuple[SupabaseCluster, MigrationReport], admin: psycopg.Connection) -> None:
    instance = cluster[0]
    owner = _user(admin)
    topic = f"ai-jobs-live:{_job(admin, owner)}"
    assert can_write(instance, topic, _claims("authenticated", owner)) is False
    assert can_write(instance, topic, _claims("anon")) is False
    # the worker's service key may (service_role bypasses RLS), as the broadcast endpoint checks
    assert can_write(instance, topic, _claims("service_role")) is True


def test_status_over_broadcast_toggle(cluster: tuple[SupabaseCluster, MigrationReport], admin: psycopg.Connection) -> None:
    instance = cluster[0]
    owner = _user(admin)
    job = _job(admin, owner)
    topic = f"ai-jobs-live:{job}"

    def sent() -> list[tuple[str, dict[str, Any], bool]]:
        return admin.execute("select event, payload, private from realtime.messages where topic = %s "
                             "order by inserted_at, payload->>'updated_at'", (topic,)).fetchall()

    with psycopg.connect(instance.url("postgres"), autocommit=True) as pg:
        pg.execute("update public.ai_jobs set progress = 5 where id = %s", (job,))
        assert sent() == []  # off by default
        with pg.transaction():
            pg.execute("set local role service_role")
            assert pg.execute("select public.ai_jobs_status_broadcast_v1(true)").fetchone()[0] is True
            assert pg.execute("select public.ai_jobs_status_broadcast_v1(true)").fetchone()[0] is True  # idempotent
        pg.execute("update public.ai_jobs set progress = 10, progress_message = 'half' where id = %s", (job,))
        pg.execute("update public.ai_jobs set priority = priority + 1 where id = %s", (job,))  # not shown: no message
        pg.execute("update public.ai_jobs set status = 'cancelled', finished_at = now() where id = %s", (job,))
        messages = sent()
        assert [(m[0], m[1]["op"], m[1]["status"], m[1]["progress"], m[2]) for m in messages] == [
            ("status", "UPDATE", "pending", 10, True), ("status", "UPDATE", "cancelled", 10, True)]
        assert "result" not in messages[0][1] and "input" not in messages[0][1]
        pg.execute("delete from public.ai_jobs where id = %s", (job,))
        assert sent()[-1][1] == {"op": "DELETE", "id": str(job)}
        with pg.transaction():
            pg.execute("set local role service_role")
            assert pg.execute("select public.ai_jobs_status_broadcast_v1(false)").fetchone()[0] is False
        job2 = _job(admin, owner)
        pg.execute("update public.ai_jobs set progress = 50 where id = %s", (job2,))
        assert admin.execute("select count(*) from realtime.messages where topic = %s", (f"ai-jobs-live:{job2}",)).fetchone()[0] == 0
        # browsers may not turn it on
        with pg.transaction():
            pg.execute("set local role authenticated")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                pg.execute("select public.ai_jobs_status_broadcast_v1(true)")
