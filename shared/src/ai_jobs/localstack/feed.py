"""The dev-only change feed behind the local Realtime edge.

A deployed Supabase project has the real Realtime server, which reads the WAL
through a replication slot. The embedded PostgreSQL of `ai-jobs dev` has none,
so `ai-jobs dev` installs, on its own database only (never through
supabase/migrations), a row trigger on public.ai_jobs that writes each change
(operation, the new row as jsonb, the old primary key, the time) to an
unlogged table in the schema ``ai_jobs_dev`` and sends ``pg_notify`` with the
change id. Notifications are delivered at commit, so the edge sees committed
changes only, in commit order per notification, and wakes on them (no polling).

For an UPDATE the trigger also names the columns the server's change would lack:
wal2json leaves out every unchanged value stored out of line (wal2json.c
``pg_decode_write_tuple``: "don't send unchanged TOAST Datum"), and Realtime's
``apply_rls.sql`` can only take such a column from the old tuple, which under the
default replica identity holds the primary key alone. Which values are out of line is
not visible from SQL in PostgreSQL 16, so the trigger applies the rule that makes a
value out of line for certain (``heaptoast.c`` ``heap_toast_insert_or_update``: a value
that "is by itself more than maxDataLen (after compression if any)" is pushed to the
TOAST table): equal before and after the update and stored (compressed) in over
``TOAST_INLINE_MAX`` bytes. Smaller values the toaster moves out of a wide row too, and
a rewrite with equal content (a new datum, sent by the server), are not modelled.
"""

from __future__ import annotations

import psycopg

CHANNEL = "ai_jobs_dev_changes"
BROADCAST_CHANNEL = "ai_jobs_dev_broadcasts"
SCHEMA = "ai_jobs_dev"
# maxDataLen for public.ai_jobs: TOAST_TUPLE_TARGET (2032 bytes with 8 kB pages) less the
# row header (24 bytes + the null bitmap of its 40-odd columns, aligned: 32).
TOAST_INLINE_MAX = 2000
# Marks the dev stand-in of realtime.send, so remove_feed drops only what it made.
STANDIN_COMMENT = "ai-jobs dev stand-in for realtime.send of Supabase Realtime (Broadcast from Database)"

# Idempotent: `ai-jobs dev` runs it at every start. Only the owner (the role
# that runs `ai-jobs dev`) may read the feed; the trigger function is security
# definer so any writer of public.ai_jobs (service_role, the worker) records.
FEED_SQL = f"""
create schema if not exists {SCHEMA};
revoke all on schema {SCHEMA} from public;
create unlogged table if not exists {SCHEMA}.changes (
  id bigint generated always as identity primary key,
  op text not null,
  record jsonb,
  old_pk jsonb not null,
  committed_at timestamptz not null default clock_timestamp()
);
alter table {SCHEMA}.changes add column if not exists unchanged_toast text[];
revoke all on table {SCHEMA}.changes from public;
create or replace function {SCHEMA}.capture_v1() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  v_id bigint;
  v_unchanged text[];
  v_key text;
  v_stored integer;
begin
  if tg_op = 'UPDATE' then
    -- columns equal before and after whose value is stored out of line: the server's
    -- change lacks them (NEW and OLD are detoasted here: the stored size is read from the row)
    for v_key in
      select n.key from jsonb_each(to_jsonb(new)) n join jsonb_each(to_jsonb(old)) o on o.key = n.key
      where n.value = o.value and pg_column_size(n.value) > {TOAST_INLINE_MAX}
    loop
      execute format('select pg_column_size(j.%I) from public.ai_jobs j where j.id = $1', v_key)
        into v_stored using new.id;
      if v_stored > {TOAST_INLINE_MAX} then
        v_unchanged := array_append(v_unchanged, v_key);
      end if;
    end loop;
  end if;
  insert into {SCHEMA}.changes (op, record, old_pk, unchanged_toast)
  values (tg_op,
          case when tg_op = 'DELETE' then null else to_jsonb(new) end,
          jsonb_build_object('id', case when tg_op = 'DELETE' then old.id else new.id end),
          v_unchanged)
  returning id into v_id;
  perform pg_notify('{CHANNEL}', v_id::text);
  return null;
end
$$;
revoke all on function {SCHEMA}.capture_v1() from public;
create or replace trigger ai_jobs_dev_capture
  after insert or update or delete on public.ai_jobs
  for each row execute function {SCHEMA}.capture_v1();

-- Broadcast from Database: a realtime.send with Supabase's signature that queues the
-- message for the edge (which delivers it on the topic), so the opt-in status
-- trigger (ai_jobs_status_broadcast_v1) works under `ai-jobs dev` too. Only created
-- where no real realtime.send exists.
create unlogged table if not exists {SCHEMA}.broadcasts (
  id bigint generated always as identity primary key,
  topic text not null,
  event text not null,
  payload jsonb,
  private boolean not null,
  sent_at timestamptz not null default clock_timestamp()
);
revoke all on table {SCHEMA}.broadcasts from public;
do $standin$
begin
  if to_regprocedure('realtime.send(jsonb, text, text, boolean)') is null
     or obj_description(to_regprocedure('realtime.send(jsonb, text, text, boolean)'), 'pg_proc') = '{STANDIN_COMMENT}' then
    create schema if not exists realtime;
    create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
    returns void language plpgsql security definer set search_path = '' as $fn$
    begin
      insert into {SCHEMA}.broadcasts (topic, event, payload, private) values (topic, event, payload, private);
      perform pg_notify('{BROADCAST_CHANNEL}', '');
    end
    $fn$;
    comment on function realtime.send(jsonb, text, text, boolean) is '{STANDIN_COMMENT}';
    grant usage on schema realtime to postgres, anon, authenticated, service_role;
    revoke all on function realtime.send(jsonb, text, text, boolean) from public;
    grant execute on function realtime.send(jsonb, text, text, boolean) to service_role;
  end if;
end
$standin$;
"""

# Changes are kept a few minutes (tests read them to time deliveries), then dropped.
KEEP = "5 minutes"


def install_feed(database_url: str) -> None:
    """Install (or refresh) the dev change feed on a local database."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute(FEED_SQL)


def remove_feed(database_url: str) -> None:
    """Drop the feed (trigger, function, tables, the realtime.send stand-in and the status
    triggers that would call it): the database is as migrations left it."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute(f"drop trigger if exists ai_jobs_dev_capture on public.ai_jobs; drop schema if exists {SCHEMA} cascade")
        standin = conn.execute("select obj_description(to_regprocedure('realtime.send(jsonb, text, text, boolean)'), "
                               "'pg_proc') = %s", (STANDIN_COMMENT,)).fetchone()
        if standin and standin[0]:
            conn.execute("drop trigger if exists ai_jobs_status_broadcast_update on public.ai_jobs;"
                         "drop trigger if exists ai_jobs_status_broadcast_delete on public.ai_jobs;"
                         "drop function realtime.send(jsonb, text, text, boolean)")
