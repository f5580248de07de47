-- ai-jobs: live Claude output over RLS-guarded Realtime Broadcast (issue 14).
--
-- 1. public.ai_jobs.stream: the snapshot of a streaming Claude call, written with
--    the worker's coalesced progress writes (ai_jobs_progress_v2), never per token:
--    {"id": <stream id, new per call>, "seq": <last message sequence number in it>,
--     "format": "text" | "json", "text": <the text so far>}.
--    Owners read it through RLS like every other column (a tab that opens
--    mid-stream shows it, then applies live deltas by offset).
-- 2. RLS policy on realtime.messages: the private Broadcast topic `ai-jobs-live:<job id>`
--    may be received (SELECT, extension 'broadcast') only by an `authenticated`
--    user who can read that job row (its owner). No INSERT policy: no browser can
--    send on it; the worker sends with the service key (bypasses RLS). Realtime
--    evaluates this at join: it sets role, request.jwt.claims and realtime.topic
--    and selects a message it inserted for the topic, in a rolled-back transaction
--    (supabase/realtime lib/realtime/tenants/authorization.ex).
--    Guarded: plain PostgreSQL (and the embedded dev database) has no realtime schema.
-- 3. Status over Broadcast (opt-in, off by default): ai_jobs_status_broadcast_v1(true)
--    installs row triggers that send each status/progress change of a job on the
--    same private topic with realtime.send (Broadcast from Database); false removes
--    them. postgres_changes stays the default and needs nothing.
-- Idempotent: guarded DDL, create or replace, privileges restated.

alter table public.ai_jobs add column if not exists stream jsonb;

comment on column public.ai_jobs.stream is
  'Snapshot of the streaming Claude call: {id, seq, format, text}; written with the coalesced progress writes (ai_jobs_progress_v2). Live deltas go over Realtime Broadcast on the private topic ai-jobs-live:<id>.';

do $constraints$
begin
  if not exists (
    select 1 from pg_constraint
    where conrelid = 'public.ai_jobs'::regclass and conname = 'ai_jobs_stream_object'
  ) then
    alter table public.ai_jobs add constraint ai_jobs_stream_object
      check (stream is null or jsonb_typeof(stream) = 'object') not valid;
  end if;
  if exists (
    select 1 from pg_constraint
    where conrelid = 'public.ai_jobs'::regclass and conname = 'ai_jobs_stream_object' and not convalidated
  ) then
    alter table public.ai_jobs validate constraint ai_jobs_stream_object;
  end if;
end
$constraints$;

-- Browsers read the new column of their own rows (column grants since fair_claim).
grant select (stream) on table public.ai_jobs to authenticated;

-- Progress, plus the stream snapshot ---------------------------------------------------

-- v1 plus p_stream: the stream snapshot written in the same update as the progress.
-- A snapshot older than the stored one (same stream id, lower seq) is ignored.
create or replace function public.ai_jobs_progress_v2(
  p_job_id uuid,
  p_worker text,
  p_progress integer,
  p_message text default null,
  p_lease_seconds integer default null,
  p_stream jsonb default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_progress is null or p_progress not between 0 and 100 then
    raise exception using errcode = '22023', message = format('progress must be between 0 and 100, got %s', p_progress);
  end if;
  if p_lease_seconds is not null then
    perform public.ai_jobs_check_lease_seconds(p_lease_seconds);
  end if;
  if p_stream is not null and (
    jsonb_typeof(p_stream) <> 'object'
    or jsonb_typeof(p_stream -> 'id') is distinct from 'string'
    or length(p_stream ->> 'id') not between 1 and 64
    or jsonb_typeof(p_stream -> 'seq') is distinct from 'number'
    or (p_stream ->> 'seq') !~ '^[0-9]{1,15}$'
    or coalesce(p_stream ->> 'format', 'text') not in ('text', 'json')
    or jsonb_typeof(p_stream -> 'text') is distinct from 'string'
    or length(p_stream ->> 'text') > 2000000
  ) then
    raise exception using errcode = '22023',
      message = 'stream must be {"id": string (1-64), "seq": integer >= 0, "format": "text"|"json", "text": string of at most 2,000,000 characters}';
  end if;
  return query
  update public.ai_jobs j set
    progress = p_progress,
    progress_message = coalesce(left(p_message, 1000), j.progress_message),
    lease_expires_at = case
      when p_lease_seconds is null then j.lease_expires_at
      else greatest(j.lease_expires_at, now() + make_interval(secs => p_lease_seconds))
    end,
    stream = case
      when p_stream is null then j.stream
      when j.stream is not null and j.stream ->> 'id' = p_stream ->> 'id'
           and (j.stream ->> 'seq')::bigint > (p_stream ->> 'seq')::bigint then j.stream
      else p_stream
    end
  where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

revoke all on function public.ai_jobs_progress_v2(uuid, text, integer, text, integer, jsonb)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_progress_v2(uuid, text, integer, text, integer, jsonb) to service_role;

-- Who may receive the private topic of a job ----------------------------------------------

-- Realtime Authorization: SELECT on realtime.messages decides who may join a private
-- channel and receive its broadcasts. Only the job's owner, for topic ai-jobs-live:<uuid>.
-- No INSERT (or UPDATE) policy: browsers cannot send on any ai-jobs-live topic.
do $live$
begin
  if to_regclass('realtime.messages') is null or to_regprocedure('realtime.topic()') is null then
    raise notice 'realtime.messages is missing (not a Supabase database): no Realtime Authorization policy installed';
    return;
  end if;
  begin
    drop policy if exists ai_jobs_live_owner_receive on realtime.messages;
    create policy ai_jobs_live_owner_receive on realtime.messages
      as permissive for select to authenticated
      using (
        realtime.messages.extension = 'broadcast'
        and exists (
          select 1 from public.ai_jobs j
          where j.user_id = (select auth.uid())
            and j.id = (
              case when (select realtime.topic()) ~ '^ai-jobs-live:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                   then substr((select realtime.topic()), 14)::uuid
              end)
        )
      );
  exception when insufficient_privilege then
    raise warning using
      message = 'could not create the Realtime Authorization policy on realtime.messages (insufficient privilege); live output will not reach browsers',
      hint = 'run this migration as postgres on Supabase (supautils lets it manage policies on realtime.messages)';
  end;
end
$live$;

-- Status over Broadcast (opt-in) -------------------------------------------------------------

-- Row trigger body: one Broadcast message (event "status") per change of a job that
-- a watcher shows: status, progress, message, cancel request, attempts; DELETE too
-- (event "status" with op DELETE). Small on purpose: the client reads the row for
-- anything else (result, error details), as it does after postgres_changes.
create or replace function public.ai_jobs_status_broadcast_send_v1()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_payload jsonb;
  v_id uuid;
begin
  if tg_op = 'DELETE' then
    v_id := old.id;
    v_payload := jsonb_build_object('op', 'DELETE', 'id', old.id);
  else
    v_id := new.id;
    v_payload := jsonb_build_object(
      'op', tg_op, 'id', new.id, 'status', new.status, 'progress', new.progress,
      'progress_message', new.progress_message, 'attempts', new.attempts,
      'cancel_requested_at', new.cancel_requested_at, 'wait_reason', new.wait_reason,
      'updated_at', new.updated_at, 'finished_at', new.finished_at);
  end if;
  -- realtime.send never raises (it logs a warning), so a broadcast never fails the update.
  perform realtime.send(v_payload, 'status', 'ai-jobs-live:' || v_id::text, true);
  return null;
end
$$;

revoke all on function public.ai_jobs_status_broadcast_send_v1() from public, anon, authenticated;

-- Turn status over Broadcast on (true) or off (false); returns whether it is on.
-- On needs Supabase's realtime.send (Realtime Broadcast from Database).
create or replace function public.ai_jobs_status_broadcast_v1(p_enabled boolean)
returns boolean
language plpgsql volatile
security definer
set search_path = ''
as $$
begin
  if p_enabled is null then
    raise exception using errcode = '22023', message = 'p_enabled must be true or false';
  end if;
  if not p_enabled then
    drop trigger if exists ai_jobs_status_broadcast_update on public.ai_jobs;
    drop trigger if exists ai_jobs_status_broadcast_delete on public.ai_jobs;
    return false;
  end if;
  if to_regprocedure('realtime.send(jsonb, text, text, boolean)') is null then
    raise exception using errcode = '0A000',
      message = 'realtime.send(jsonb, text, text, boolean) is missing: status over Broadcast needs a Supabase database with Realtime';
  end if;
  create or replace trigger ai_jobs_status_broadcast_update
    after update on public.ai_jobs
    for each row
    when ((old.status, old.progress, old.progress_message, old.cancel_requested_at, old.attempts, old.wait_reason)
          is distinct from
          (new.status, new.progress, new.progress_message, new.cancel_requested_at, new.attempts, new.wait_reason))
    execute function public.ai_jobs_status_broadcast_send_v1();
  create or replace trigger ai_jobs_status_broadcast_delete
    after delete on public.ai_jobs
    for each row execute function public.ai_jobs_status_broadcast_send_v1();
  return true;
end
$$;

revoke all on function public.ai_jobs_status_broadcast_v1(boolean) from public, anon, authenticated;
grant execute on function public.ai_jobs_status_broadcast_v1(boolean) to service_role;
