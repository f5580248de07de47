"""A throwaway PostgreSQL 15 cluster shaped like a Supabase database, with the
real pg_cron (Debian's postgresql-15-cron) running in it.

What is modelled on what (supabase/postgres, migrations/db/):
  * initdb's bootstrap superuser is `supabase_admin`; `postgres` is a LOGIN role
    that is NOT a superuser, with CREATEDB CREATEROLE REPLICATION BYPASSRLS and
    ownership of the `postgres` database (migrate.sh, then
    migrations/10000000000000_demote-postgres.sql);
  * anon / authenticated / service_role / authenticator as
    init-scripts/00000000000000-initial-schema.sql creates them (later made
    INHERIT by 20230529180330_alter_api_roles_for_inherit.sql), granted to
    postgres (20230201083204_grant_auth_roles_to_postgres.sql), plus
    pg_monitor, pg_read_all_data and pg_signal_backend (20230306081037,
    20240606060239);
  * default privileges FOR ROLE postgres in public: ALL to the API roles
    (initial-schema.sql ran as postgres, so they are postgres's defaults);
  * the `extensions` schema, `auth.users` and the `supabase_realtime`
    publication come from our supabase/local/supabase_standin.sql, applied as
    supabase_admin, then handed to postgres as Supabase hands them over (ALL on
    auth's tables; the publication owned by postgres, who created it there);
  * pg_cron created by supabase_admin `with schema pg_catalog`, then the
    grants of ansible/files/postgresql_extension_custom_scripts/pg_cron/
    after-create.sql: postgres gets usage on cron, all cron functions and
    tables, but only SELECT on cron.job (20231020085357_revoke_writes_on_cron_job_from_postgres.sql).

Two stand-ins, because the real extensions are not packaged here:
  * pg_net: `net.http_get` with pg_net's signature (sql/pg_net.sql of
    supabase/pg_net, 0.16+: not STRICT, 5000 ms default timeout), which queues
    the request in `net.http_request_queue` exactly as the real function does;
    only pg_net's background worker, which would send it, is missing. Made
    SECURITY DEFINER with search_path net and granted to postgres and the API
    roles as Supabase's grant_pg_net_access event trigger does
    (init-scripts/00000000000003-post-setup.sql).
  * Vault: `vault.secrets`, `vault.decrypted_secrets` and
    `vault.create_secret(new_secret, new_name, new_description, new_key_id)`
    with supabase/vault's names and signatures (sql/supabase_vault--0.3.0.sql),
    storing the secret unencrypted. postgres may read and delete secrets and call
    create_secret, as on Supabase.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ai_jobs.database.migrations import supabase_dir

PG_BINDIR = Path(os.environ.get("AI_JOBS_PG15_BINDIR", "/usr/lib/postgresql/15/bin"))
PG_CRON_CONTROL = Path("/usr/share/postgresql/15/extension/pg_cron.control")

ROLES_SQL = """
create role postgres login nosuperuser createdb createrole replication bypassrls;
alter database postgres owner to postgres;
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit;
grant anon, authenticated, service_role to authenticator;
alter role anon inherit;
alter role authenticated inherit;
alter role service_role inherit;
grant anon, authenticated, service_role to postgres;
grant pg_monitor, pg_read_all_data, pg_signal_backend to postgres;
"""

# Per database: what Supabase's init scripts leave in every project database.
DATABASE_SQL = """
grant usage on schema public to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on sequences to anon, authenticated, service_role;
create schema if not exists extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
grant all on schema extensions to postgres;
"""

AFTER_STANDIN_SQL = """
grant all on schema auth to postgres;
grant all on all tables in schema auth to postgres;
grant all on all routines in schema auth to postgres;
alter publication supabase_realtime owner to postgres;
"""

PG_CRON_SQL = """
create extension pg_cron with schema pg_catalog;
grant usage on schema cron to postgres with grant option;
grant all on all functions in schema cron to postgres with grant option;
alter default privileges for user supabase_admin in schema cron grant all on sequences to postgres with grant option;
alter default privileges for user supabase_admin in schema cron grant all on tables to postgres with grant option;
alter default privileges for user supabase_admin in schema cron grant all on functions to postgres with grant option;
grant all privileges on all tables in schema cron to postgres with grant option;
revoke all on table cron.job from postgres;
grant select on table cron.job to postgres with grant option;
"""

PG_NET_STANDIN_SQL = """
create schema if not exists net;
create table if not exists net.http_request_queue (
  id bigserial,
  method text not null,
  url text not null,
  headers jsonb not null,
  body bytea,
  timeout_milliseconds int not null
);
create or replace function net.http_get(
  url text,
  params jsonb default '{}'::jsonb,
  headers jsonb default '{}'::jsonb,
  timeout_milliseconds int default 5000
) returns bigint
language plpgsql volatile security definer
set search_path = net
as $$
declare
  request_id bigint;
begin
  -- pg_net appends url-encoded params to the url; our caller sends none.
  insert into net.http_request_queue (method, url, headers, timeout_milliseconds)
  values ('GET', url, headers, timeout_milliseconds)
  returning id into request_id;
  return request_id;
end
$$;
grant usage on schema net to postgres, anon, authenticated, service_role;
grant all on all tables in schema net to public;  -- as pg_net.sql does
grant all on all sequences in schema net to public;
revoke all on function net.http_get(text, jsonb, jsonb, integer) from public;
grant execute on function net.http_get(text, jsonb, jsonb, integer) to postgres, anon, authenticated, service_role;
"""

VAULT_STANDIN_SQL = """
create schema if not exists vault;
create table if not exists vault.secrets (
  id uuid primary key default gen_random_uuid(),
  name text,
  description text not null default '',
  secret text not null,
  key_id uuid,
  nonce bytea,
  created_at timestamptz not null default current_timestamp,
  updated_at timestamptz not null default current_timestamp
);
create unique index if not exists secrets_name_idx on vault.secrets (name) where name is not null;
create or replace view vault.decrypted_secrets as
  select s.id, s.name, s.description, s.secret, s.secret as decrypted_secret,
         s.key_id, s.nonce, s.created_at, s.updated_at
  from vault.secrets s;
create or replace function vault.create_secret(
  new_secret text, new_name text = null, new_description text = '', new_key_id uuid = null
) returns uuid
language sql security definer
set search_path = ''
as $$
  insert into vault.secrets (secret, name, description) values (new_secret, new_name, new_description)
  returning id
$$;
revoke all on function vault.create_secret(text, text, text, uuid) from public;
grant usage on schema vault to postgres with grant option;
grant select, delete on vault.secrets, vault.decrypted_secrets to postgres with grant option;
grant execute on function vault.create_secret(text, text, text, uuid) to postgres with grant option;
"""


def pg_cron_available() -> bool:
    return (PG_BINDIR / "initdb").exists() and PG_CRON_CONTROL.exists()


@dataclass
class SupabaseCluster:
    """A running cluster; `url(user, dbname)` connects over its unix socket."""

    root: Path
    socket_dir: Path
    os_user: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, user: str = "postgres", dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(host=str(self.socket_dir), user=user, dbname=dbname)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        """A superuser connection (supabase_admin), for what Supabase itself does."""
        return psycopg.connect(self.url("supabase_admin", dbname), autocommit=True)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*args]
        if self.os_user:
            command = ["runuser", "-u", self.os_user, "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self._run(str(PG_BINDIR / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run(str(PG_BINDIR / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def prepare_database(self, dbname: str, *, pg_cron: bool) -> None:
        """What a Supabase project database has before our migrations run."""
        with self.admin(dbname) as conn:
            conn.execute(DATABASE_SQL)
            conn.execute((supabase_dir() / "local" / "supabase_standin.sql").read_text())
            conn.execute(AFTER_STANDIN_SQL)
            conn.execute(VAULT_STANDIN_SQL)
            conn.execute(PG_NET_STANDIN_SQL)
            if pg_cron:
                conn.execute(PG_CRON_SQL)


def start_cluster() -> SupabaseCluster:
    """initdb (as an unprivileged OS user when we are root: initdb refuses root), configure
    pg_cron for the `postgres` database over the socket, start, and create the roles."""
    root = Path(tempfile.mkdtemp(prefix="ajc-", dir="/tmp"))  # short: the socket path has a length limit
    os_user = "postgres" if os.geteuid() == 0 else None
    if os_user:
        shutil.chown(root, user=os_user)
    cluster = SupabaseCluster(root=root, socket_dir=root, os_user=os_user)
    cluster._run(str(PG_BINDIR / "initdb"), "-D", str(cluster.data_dir), "-U", "supabase_admin",
                 "--auth=trust", "-E", "UTF8", "--locale=C")
    with open(cluster.data_dir / "postgresql.conf", "a") as conf:
        conf.write(
            "\nlisten_addresses = ''\n"
            f"unix_socket_directories = '{cluster.socket_dir}'\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            "shared_preload_libraries = 'pg_cron'\n"
            "cron.database_name = 'postgres'\n"
            f"cron.host = '{cluster.socket_dir}'\n"
        )
    cluster.start()
    with cluster.admin() as conn:
        conn.execute(ROLES_SQL)
    return cluster


def destroy_cluster(cluster: SupabaseCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


def wait_for_run(conn: psycopg.Connection, started_after: object, *, timeout: float = 75) -> dict[str, object]:
    """The first finished run of ai-jobs-wake that started after `started_after`, as
    pg_cron recorded it in cron.job_run_details."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "select d.status, d.return_message, d.start_time, d.end_time from cron.job_run_details d "
            "join cron.job j using (jobid) where j.jobname = 'ai-jobs-wake' and d.start_time > %s "
            "and d.status in ('succeeded', 'failed') order by d.runid limit 1",
            (started_after,),
        ).fetchone()
        if row:
            return dict(zip(("status", "return_message", "start_time", "end_time"), row, strict=True))
        time.sleep(0.5)
    raise TimeoutError(f"pg_cron ran no ai-jobs-wake job in {timeout} s")
