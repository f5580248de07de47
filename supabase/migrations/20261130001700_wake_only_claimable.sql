-- Wake-ups and re-dispatches only for work a claim can take; parent counts the 0.5 s
-- throttle held back are written later instead of dropped.
--
-- Before: the wake-up (ai_jobs_wake_v2, run by pg_cron every 5 seconds) called the
-- sweep whenever any pending job was due, and the sweep's re-dispatch
-- (ai_jobs_stale_pending_v1) asked for a work invocation for up to 10 due jobs of any
-- type. A backlog held back by its own concurrency limit (the owner's, organization's
-- or key's running jobs at the limit) therefore made every sweep request 10 work
-- invocations that each claimed nothing and waited about 2.5 s, for as long as the
-- backlog lasted; jobs of a type no deployment serves anymore were never claimed and
-- never finished, so that went on for ever.
--
-- Now:
--   * A job's concurrency limit is full when as many jobs of its user (user_limit),
--     organization (org_limit) or concurrency key (key_limit, scoped as the claim
--     scopes it) are running as the limit allows: the claim's own rule, counted the
--     same way (running jobs only; ai_jobs_running_by_scope), so exactly the jobs the
--     claim would hold back with wait_reason user_limit / org_limit / key_limit,
--     whether a claim has looked at them yet or not. Such a job starts when a slot
--     frees: the worker whose job ends claims next, and once the slot is free the job
--     counts as due work again (the wake-up and the re-dispatch see it).
--   * ai_jobs_work_due_v1: what the wake-up calls work: a running job whose lease
--     expired, an active schedule whose tick is due, or a due pending job whose
--     concurrency limits are not full.
--   * ai_jobs_wake_v2 is redefined (end of file; same signature and results, 'idle' /
--     'woken'; only pg_cron calls it, so the ai-jobs-wake job and its status stay as
--     they are) to call the sweep only when ai_jobs_work_due_v1() is true.
--   * ai_jobs_stale_pending_v2: v1 limited to the caller's job types (the types the
--     deployment registers) and to jobs whose concurrency limits are not full.
--     ai_jobs_stale_pending_v1 stays for sweeps of the previous release.
--   * ai_jobs_fail_unregistered_v1: pending jobs due for longer than the stale age
--     whose type is not among the caller's job types are finished with the error
--     {code: unknown_job_type, retryable: false} (cancelled instead when a cancel was
--     requested), so they stop counting as due work.
--   * Parent counts (see the section below): a recount of a parent's `children` the
--     0.5 s throttle held back is owed (ai_jobs_parent_recounts) and written by the
--     next write of those counts or by ai_jobs_recount_parents_v1, which the wake-up
--     runs on every run and the sweep calls.
-- Idempotent: guarded DDL, functions created with "or replace", privileges restated.

-- Wake-ups and re-dispatch ----------------------------------------------------------------

-- Running jobs per limited scope, as ai_jobs_claim_v2 counts them, as one object:
-- {"u:<user_id>": n, "o:<org_id>": n, "k:o:<org_id> <key>" or "k:u:<user_id> <key>": n}.
-- Running jobs are few (one per busy worker), so this is three small scans of the
-- running-job indexes, made once per call of the functions below instead of once per
-- pending job.
create or replace function public.ai_jobs_running_by_scope()
returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(c.scope, c.n), '{}'::jsonb) from (
    select 'u:' || r.user_id::text as scope, count(*) as n
    from public.ai_jobs r where r.status = 'running' group by r.user_id
    union all
    select 'o:' || r.org_id, count(*)
    from public.ai_jobs r where r.status = 'running' and r.org_id is not null group by r.org_id
    union all
    select 'k:' || coalesce('o:' || r.org_id, 'u:' || r.user_id::text) || ' ' || r.concurrency_key, count(*)
    from public.ai_jobs r where r.status = 'running' and r.concurrency_key is not null
    group by 1
  ) c
$$;

-- Is there work for the app now? An expired lease (the sweep reaps it), a due schedule
-- tick (the sweep fires it), or a due pending job a claim could take: none of its
-- concurrency limits full (a job's limit is full when as many of its user's,
-- organization's or key's jobs run as the limit allows, the claim's own rule). A due
-- job held back by a full limit is not work: the worker whose running job ends claims it.
create or replace function public.ai_jobs_work_due_v1()
returns boolean
language plpgsql stable
set search_path = ''
as $$
declare
  v_running jsonb;
begin
  if exists (select 1 from public.ai_jobs j where j.status = 'running' and j.lease_expires_at <= now())
     or exists (select 1 from public.ai_job_schedules s where not s.paused and s.next_run_at <= now()) then
    return true;
  end if;
  if not exists (select 1 from public.ai_jobs j where j.status = 'pending' and j.run_at <= now()) then
    return false;  -- the idle queue: one index probe
  end if;
  v_running := public.ai_jobs_running_by_scope();
  return exists (
    select 1 from public.ai_jobs j
    where j.status = 'pending' and j.run_at <= now()
      and (j.user_limit is null
           or coalesce((v_running ->> ('u:' || j.user_id::text))::integer, 0) < j.user_limit)
      and (j.org_limit is null or j.org_id is null
           or coalesce((v_running ->> ('o:' || j.org_id))::integer, 0) < j.org_limit)
      and (j.key_limit is null or j.concurrency_key is null
           or coalesce((v_running ->> ('k:' || coalesce('o:' || j.org_id, 'u:' || j.user_id::text)
                                       || ' ' || j.concurrency_key))::integer, 0) < j.key_limit));
end
$$;

-- Due jobs nobody picked up for a while that a worker of this deployment could claim
-- now (its job types; no concurrency limit full, as in ai_jobs_work_due_v1): the sweep
-- asks for worker invocations for them. p_job_types null: any type.
create or replace function public.ai_jobs_stale_pending_v2(
  p_older_than_seconds integer default 60,
  p_limit integer default 100,
  p_job_types text[] default null
)
returns setof public.ai_jobs
language plpgsql stable
set search_path = ''
as $$
declare
  v_running jsonb := public.ai_jobs_running_by_scope();
begin
  return query
  select * from public.ai_jobs j
  where j.status = 'pending'
    and j.run_at <= now() - make_interval(secs => greatest(p_older_than_seconds, 0))
    and (p_job_types is null or j.job_type = any (p_job_types))
    and (j.user_limit is null
         or coalesce((v_running ->> ('u:' || j.user_id::text))::integer, 0) < j.user_limit)
    and (j.org_limit is null or j.org_id is null
         or coalesce((v_running ->> ('o:' || j.org_id))::integer, 0) < j.org_limit)
    and (j.key_limit is null or j.concurrency_key is null
         or coalesce((v_running ->> ('k:' || coalesce('o:' || j.org_id, 'u:' || j.user_id::text)
                                     || ' ' || j.concurrency_key))::integer, 0) < j.key_limit)
  order by j.priority desc, j.run_at, j.id
  limit greatest(coalesce(p_limit, 100), 1);
end
$$;

-- Finish pending jobs that no worker of this deployment can run: due for longer than
-- p_older_than_seconds and of a type not in p_job_types (the types the deployment
-- registers; required, at least one). Failed with unknown_job_type (not retryable),
-- or cancelled when a cancel was requested. Returns the rows it finished.
create or replace function public.ai_jobs_fail_unregistered_v1(
  p_job_types text[],
  p_older_than_seconds integer default 60,
  p_limit integer default 100
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_job_types is null or cardinality(p_job_types) = 0 then
    raise exception using errcode = '22023',
      message = 'job_types must list the job types this deployment registers (at least one)';
  end if;
  return query
  with doomed as (
    select j.id from public.ai_jobs j
    where j.status = 'pending'
      and j.run_at <= now() - make_interval(secs => greatest(coalesce(p_older_than_seconds, 60), 0))
      and j.job_type <> all (p_job_types)
    order by j.run_at, j.id
    limit greatest(coalesce(p_limit, 100), 1)
    for update skip locked
  )
  update public.ai_jobs j set
    status = case when j.cancel_requested_at is not null then 'cancelled' else 'failed' end,
    error = jsonb_build_object(
      'code', 'unknown_job_type',
      'message', format('job type %s is not registered in this deployment, so no worker can run it',
                        j.job_type),
      'retryable', false),
    wait_reason = null,
    finished_at = now()
  from doomed d
  where j.id = d.id and j.status = 'pending'
  returning j.*;
end
$$;


-- Parent counts: a recount the 0.5 s throttle held back is written later ------------------
--
-- Before: ai_jobs_refresh_parent (the children's trigger) wrote the parent's `children`
-- counts (and, while it waits, its progress) at most every 0.5 s and dropped the recount
-- it skipped; nothing wrote it later. Two of three children finishing within 0.5 s left
-- the parent at done: 1 until the third finished, an hour later perhaps.
-- Now a skipped recount is owed: a row in ai_jobs_parent_recounts, due when the throttle
-- allows the next write (the last write's `at` + 0.5 s). It is paid by whichever comes
-- first: the next write of that parent's counts (a child finishing 0.5 s or more after
-- the last write, the last child, a spawn or wait), or ai_jobs_recount_parents_v1, which
-- the wake-up (ai_jobs_wake_v2, every run, before it decides whether to call the app)
-- and the sweep call. Locks are taken parent row first, then the owed row, everywhere.

create table if not exists public.ai_jobs_parent_recounts (
  parent_id uuid primary key,
  due_at    timestamptz not null
);
comment on table public.ai_jobs_parent_recounts is
  'Parents whose children counts a 0.5 s throttle held back; ai_jobs_recount_parents_v1 writes them once due.';
create index if not exists ai_jobs_parent_recounts_due_idx on public.ai_jobs_parent_recounts (due_at);
alter table public.ai_jobs_parent_recounts enable row level security;
revoke all on table public.ai_jobs_parent_recounts from public, anon, authenticated;
grant select, insert, update, delete on table public.ai_jobs_parent_recounts to service_role;

-- 20261130001200's function, plus the owed recount: recorded when the throttle skips the
-- write, cleared when the counts are written.
create or replace function public.ai_jobs_refresh_parent(p_parent_id uuid, p_force boolean default false)
returns boolean
language plpgsql volatile
set search_path = ''
as $$
declare
  v_parent public.ai_jobs;
  v_total integer;
  v_active integer;
  v_failed integer;
  v_wait_active integer := 0;
  v_wait_failed integer := 0;
  v_waiting boolean;
  v_wake boolean := false;
  v_keys text[];
begin
  select * into v_parent from public.ai_jobs j where j.id = p_parent_id for update;
  if not found then
    return false;
  end if;
  select count(*)::integer,
         (count(*) filter (where c.status in ('pending', 'running', 'paused')))::integer,
         (count(*) filter (where c.status in ('failed', 'cancelled')))::integer
    into v_total, v_active, v_failed
  from public.ai_jobs c where c.parent_id = p_parent_id;
  v_waiting := v_parent.status = 'pending' and v_parent.wait_reason = 'waiting_for_children';
  if v_waiting then
    if jsonb_typeof(v_parent.waiting -> 'keys') = 'array' then
      select array_agg(k) into v_keys from jsonb_array_elements_text(v_parent.waiting -> 'keys') k;
      select (count(*) filter (where c.status in ('pending', 'running', 'paused')))::integer,
             (count(*) filter (where c.status in ('failed', 'cancelled')))::integer
        into v_wait_active, v_wait_failed
      from public.ai_jobs c where c.parent_id = p_parent_id and c.spawn_key = any (coalesce(v_keys, '{}'));
    else
      v_wait_active := v_active;
      v_wait_failed := v_failed;
    end if;
    v_wake := v_wait_active = 0
      or v_wait_failed > coalesce((v_parent.waiting ->> 'max_failures')::integer, 0);
  end if;
  if v_wake or p_force or v_active = 0 or v_parent.children is null
     or (v_parent.children ->> 'at')::timestamptz < clock_timestamp() - interval '0.5 seconds' then
    update public.ai_jobs j set
      children = jsonb_build_object('total', v_total, 'done', v_total - v_active, 'failed', v_failed,
                                    'active', v_active, 'at', clock_timestamp()),
      progress = case when v_waiting and v_total > 0 then ((v_total - v_active) * 100 / v_total) else j.progress end,
      progress_message = case when v_waiting
                              then format('%s of %s children done', v_total - v_active, v_total)
                              else j.progress_message end,
      run_at = case when v_wake then now() else j.run_at end,
      wait_reason = case when v_wake then null else j.wait_reason end,
      waiting = case when v_wake then null else j.waiting end
    where j.id = p_parent_id;
    delete from public.ai_jobs_parent_recounts r where r.parent_id = p_parent_id;
  elsif (v_parent.children ->> 'total')::integer is distinct from v_total
        or (v_parent.children ->> 'active')::integer is distinct from v_active
        or (v_parent.children ->> 'failed')::integer is distinct from v_failed then
    -- held back by the throttle: owed once it allows the next write
    insert into public.ai_jobs_parent_recounts as r (parent_id, due_at)
    values (p_parent_id, (v_parent.children ->> 'at')::timestamptz + interval '0.5 seconds')
    on conflict (parent_id) do nothing;
  end if;
  if v_wake then
    perform pg_notify('ai_jobs_due', '');  -- idle listening workers (ai-jobs worker) claim it now
  end if;
  return v_wake;
end
$$;

-- Write the counts owed (due now) of up to p_limit parents; returns how many it wrote.
-- The wake-up and the sweep call it. Each parent row is locked before its owed row (the
-- order of every child's trigger), and a recount another caller paid meanwhile is skipped.
create or replace function public.ai_jobs_recount_parents_v1(p_limit integer default 100)
returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  v_id uuid;
  v_written integer := 0;
begin
  for v_id in
    select r.parent_id from public.ai_jobs_parent_recounts r
    where r.due_at <= clock_timestamp()
    order by r.due_at
    limit greatest(coalesce(p_limit, 100), 1)
  loop
    perform 1 from public.ai_jobs j where j.id = v_id for update;
    if not found then  -- the parent is gone
      delete from public.ai_jobs_parent_recounts r where r.parent_id = v_id;
      continue;
    end if;
    if exists (select 1 from public.ai_jobs_parent_recounts r where r.parent_id = v_id) then
      perform public.ai_jobs_refresh_parent(v_id, true);  -- writes the counts, clears the owed row
      v_written := v_written + 1;
    end if;
  end loop;
  return v_written;
end
$$;

-- What pg_cron runs, redefined (same signature and results, 'idle' / 'woken'): on every
-- run it first writes the parent counts owed (no HTTP call for them), then calls the
-- sweep only when ai_jobs_work_due_v1() is true (before: any due pending job).
create or replace function public.ai_jobs_wake_v2()
returns text
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_problem text;
  v_url text;
  v_secret text;
begin
  perform public.ai_jobs_recount_parents_v1(100);
  if not public.ai_jobs_work_due_v1() then
    return 'idle';
  end if;
  v_problem := public.ai_jobs_wake_setup_problem();
  if v_problem is not null then
    raise exception using errcode = '55000', message = v_problem;
  end if;
  select btrim(s.decrypted_secret) into v_url from vault.decrypted_secrets s where s.name = 'ai_jobs_app_url';
  select btrim(s.decrypted_secret) into v_secret from vault.decrypted_secrets s where s.name = 'ai_jobs_cron_secret';
  perform net.http_get(
    url := rtrim(v_url, '/') || '/api/internal/sweep',
    headers := jsonb_build_object('Authorization', 'Bearer ' || v_secret),
    timeout_milliseconds := 5000
  );
  return 'woken';
end
$$;

-- Privileges: service_role only (and the owner, who runs the cron job) --------------------

revoke all on function
  public.ai_jobs_running_by_scope(),
  public.ai_jobs_work_due_v1(),
  public.ai_jobs_stale_pending_v2(integer, integer, text[]),
  public.ai_jobs_fail_unregistered_v1(text[], integer, integer),
  public.ai_jobs_refresh_parent(uuid, boolean),
  public.ai_jobs_recount_parents_v1(integer),
  public.ai_jobs_wake_v2()
from public, anon, authenticated;
grant execute on function
  public.ai_jobs_running_by_scope(),
  public.ai_jobs_work_due_v1(),
  public.ai_jobs_stale_pending_v2(integer, integer, text[]),
  public.ai_jobs_fail_unregistered_v1(text[], integer, integer),
  public.ai_jobs_refresh_parent(uuid, boolean),
  public.ai_jobs_recount_parents_v1(integer),
  public.ai_jobs_wake_v2()
to service_role;
