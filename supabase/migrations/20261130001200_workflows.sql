-- ai-jobs: workflows across invocations (issue 16, items 1-5).
--
-- 1. Child jobs. ai_jobs_spawn_v1 creates children of a running job (its worker holds
--    the lease), owned by the same user, idempotently by (parent_id, spawn_key): a
--    unique index, so a retried or resumed parent never creates a child twice. Each
--    child goes through ai_jobs_enqueue_v3 (run_at range, limits, daily budget). The
--    depth (levels, root = 1) and the number of children per job are capped.
-- 2. Waiting without a worker. ai_jobs_wait_children_v1 returns the children's results
--    (in spawn order) when they are all finished, or puts the parent back to pending
--    with wait_reason 'waiting_for_children', no lease, no attempt spent. A trigger on
--    the children's status wakes the parent (run_at = now()) when the last waited-for
--    child finishes, or when more children failed than the wait tolerates; the normal
--    wake-up / hand-off / next_due path then runs it. It also keeps the parent's
--    `children` counts ({total, done, failed, active}), written at most every 0.5 s
--    (always when none is left active). Deleting a child wakes its parent too, and
--    ai_jobs_resolve_waiting_v1 (the sweep) wakes any waiting parent with nothing
--    left to wait for, so no parent waits forever.
-- 3. Pause and resume: status 'paused' (never claimed). A running job gets
--    pause_requested_at and stops at its next step (ai_jobs_paused_v1).
-- 4. Tree rules: cancel, pause and resume reach unfinished descendants; retry re-runs
--    failed or cancelled descendants; delete is refused while descendants are active.
-- Idempotent: guarded DDL, create or replace, privileges restated.

-- Columns ---------------------------------------------------------------------------

alter table public.ai_jobs
  add column if not exists spawn_key text,
  add column if not exists spawn_seq integer,
  add column if not exists depth smallint not null default 0,
  add column if not exists waiting jsonb,
  add column if not exists children jsonb,
  add column if not exists pause_requested_at timestamptz;

comment on column public.ai_jobs.spawn_key is
  'The key the parent spawned this child under; unique per parent (idempotent spawn).';
comment on column public.ai_jobs.spawn_seq is 'The child''s place in its parent''s spawn order (0-based).';
comment on column public.ai_jobs.depth is 'Levels above this job: 0 for a root job, 1 for its children, ...';
comment on column public.ai_jobs.waiting is
  'While wait_reason = waiting_for_children: {keys: [...] or null (all children), max_failures}.';
comment on column public.ai_jobs.children is
  'The children''s counts {total, done, failed, active, at}, kept by a trigger (at most every 0.5 s).';
comment on column public.ai_jobs.pause_requested_at is
  'Set when a running job is asked to pause; it stops at its next step and becomes paused.';

do $constraints$
declare
  r record;
begin
  -- status admits 'paused' (swapped once: the old definition has no 'paused').
  if exists (
    select 1 from pg_constraint
    where conrelid = 'public.ai_jobs'::regclass and conname = 'ai_jobs_status_valid'
      and pg_get_constraintdef(oid) not like '%paused%'
  ) then
    alter table public.ai_jobs drop constraint ai_jobs_status_valid;
  end if;
  for r in
    select * from (values
      ('ai_jobs_status_valid',
       'check (status in (''pending'', ''running'', ''completed'', ''failed'', ''cancelled'', ''paused''))'),
      ('ai_jobs_spawn_key_format', 'check (length(spawn_key) between 1 and 200 and spawn_key !~ ''[[:cntrl:]]'')'),
      ('ai_jobs_depth_range', 'check (depth between 0 and 100)'),
      ('ai_jobs_waiting_object', 'check (jsonb_typeof(waiting) = ''object'')'),
      ('ai_jobs_children_object', 'check (jsonb_typeof(children) = ''object'')')
    ) as c (name, def)
  loop
    if not exists (
      select 1 from pg_constraint where conrelid = 'public.ai_jobs'::regclass and conname = r.name
    ) then
      execute format('alter table public.ai_jobs add constraint %I %s not valid', r.name, r.def);
    end if;
    if exists (
      select 1 from pg_constraint
      where conrelid = 'public.ai_jobs'::regclass and conname = r.name and not convalidated
    ) then
      execute format('alter table public.ai_jobs validate constraint %I', r.name);
    end if;
  end loop;
end
$constraints$;

-- Indexes ---------------------------------------------------------------------------

-- Idempotent spawn, and a parent's children in spawn order.
create unique index if not exists ai_jobs_spawn_key_idx
  on public.ai_jobs (parent_id, spawn_key) where parent_id is not null and spawn_key is not null;
-- A parent's unfinished children (wake-up check and counts).
create index if not exists ai_jobs_active_children_idx
  on public.ai_jobs (parent_id) where parent_id is not null and status in ('pending', 'running', 'paused');
-- Parents waiting for children (the sweep's check).
create index if not exists ai_jobs_waiting_parents_idx
  on public.ai_jobs (run_at) where status = 'pending' and wait_reason = 'waiting_for_children';

-- Browsers read the new columns too (RLS keeps them to their own rows).
grant select (spawn_key, spawn_seq, depth, waiting, children, pause_requested_at) on table public.ai_jobs
  to authenticated;

-- Parent bookkeeping ------------------------------------------------------------------

-- Recount a parent's children; wake it when it waits and nothing it waits for is left
-- active (or more failed than it tolerates). The parent row is locked first, so two
-- last children finishing at once cannot both miss the wake-up (the second one waits
-- for the first to commit, then sees it finished). Returns true when it woke the parent.
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
  end if;
  if v_wake then
    perform pg_notify('ai_jobs_due', '');  -- idle listening workers (ai-jobs worker) claim it now
  end if;
  return v_wake;
end
$$;

create or replace function public.ai_jobs_child_changed()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if tg_op = 'DELETE' then
    perform public.ai_jobs_refresh_parent(old.parent_id);
  else
    perform public.ai_jobs_refresh_parent(new.parent_id);
  end if;
  return null;
end
$$;

-- Only a child's move to a final status (or its deletion) fires: the WHEN clause keeps
-- every other write (claims, heartbeats, root jobs) free of it.
create or replace trigger ai_jobs_child_finished
  after update of status on public.ai_jobs
  for each row
  when (new.parent_id is not null and old.status is distinct from new.status
        and new.status in ('completed', 'failed', 'cancelled'))
  execute function public.ai_jobs_child_changed();

create or replace trigger ai_jobs_child_deleted
  after delete on public.ai_jobs
  for each row
  when (old.parent_id is not null and old.status in ('pending', 'running', 'paused'))
  execute function public.ai_jobs_child_changed();

-- Spawn -------------------------------------------------------------------------------

-- p_children: [{"key", "job_type", "input", "priority", "run_at", "metadata", "max_attempts",
--   "concurrency_key", "user_limit", "org_limit", "key_limit", "cost_estimate_usd",
--   "cost_cap_usd", "daily_budget_usd", "max_active"}, ...], at most 1000.
-- Returns [{"created": bool, "job": {...}}, ...] in input order. All or nothing.
create or replace function public.ai_jobs_spawn_v1(
  p_job_id uuid,
  p_worker text,
  p_children jsonb,
  p_max_depth integer default 3,
  p_max_children integer default 1000
)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_parent public.ai_jobs;
  v_child public.ai_jobs;
  v_spec jsonb;
  v_key text;
  v_out jsonb[] := '{}';
  v_result jsonb;
  v_count integer;
  v_new integer;
  v_index integer := 0;
begin
  if p_children is null or jsonb_typeof(p_children) <> 'array' then
    raise exception using errcode = '22023', message = 'children must be a JSON array of child objects';
  end if;
  if jsonb_array_length(p_children) > 1000 then
    raise exception using errcode = '22023',
      message = format('at most 1000 children per call, got %s', jsonb_array_length(p_children));
  end if;
  if p_max_depth is null or p_max_depth not between 1 and 100 or p_max_children is null
     or p_max_children not between 0 and 100000 then
    raise exception using errcode = '22023', message = 'max_depth must be 1 to 100 and max_children 0 to 100000';
  end if;
  select * into v_parent from public.ai_jobs j where j.id = p_job_id for update;
  if not found or v_parent.status <> 'running' or v_parent.locked_by is distinct from p_worker then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
  for v_spec in select value from jsonb_array_elements(p_children) loop
    if jsonb_typeof(v_spec) <> 'object' or jsonb_typeof(v_spec -> 'key') is distinct from 'string'
       or jsonb_typeof(v_spec -> 'job_type') is distinct from 'string'
       or length(v_spec ->> 'key') not between 1 and 200 or (v_spec ->> 'key') ~ '[[:cntrl:]]' then
      raise exception using errcode = '22023',
        message = format('child %s: an object with job_type and a key of 1 to 200 characters is required', v_index);
    end if;
    v_index := v_index + 1;
  end loop;
  if v_parent.depth + 2 > p_max_depth then
    raise exception using errcode = '22023',
      message = format('spawn depth cap: job %s is at level %s and jobs may nest at most %s levels',
                       p_job_id, v_parent.depth + 1, p_max_depth);
  end if;
  select count(*) into v_count from public.ai_jobs c where c.parent_id = p_job_id;
  select count(distinct e ->> 'key') into v_new from jsonb_array_elements(p_children) e
  where not exists (select 1 from public.ai_jobs c where c.parent_id = p_job_id and c.spawn_key = e ->> 'key');
  if v_count + v_new > p_max_children then
    raise exception using errcode = '22023',
      message = format('children cap: job %s has %s children, %s more would pass the cap of %s',
                       p_job_id, v_count, v_new, p_max_children);
  end if;
  for v_spec in select value from jsonb_array_elements(p_children) loop
    v_key := v_spec ->> 'key';
    select * into v_child from public.ai_jobs c where c.parent_id = p_job_id and c.spawn_key = v_key;
    if found then
      if v_child.job_type <> (v_spec ->> 'job_type') or v_child.input <> coalesce(v_spec -> 'input', '{}'::jsonb) then
        raise exception using errcode = 'AJ005',
          message = format('spawn key %L of job %s was already used for a different child (job %s)',
                           v_key, p_job_id, v_child.id),
          hint = 'use a new key for a different child';
      end if;
      v_out := v_out || jsonb_build_object('created', false, 'job', to_jsonb(v_child));
      continue;
    end if;
    v_result := public.ai_jobs_enqueue_v3(
      p_user_id => v_parent.user_id,
      p_job_type => v_spec ->> 'job_type',
      p_input => coalesce(v_spec -> 'input', '{}'::jsonb),
      p_priority => coalesce((v_spec ->> 'priority')::integer, 0),
      p_run_at => (v_spec ->> 'run_at')::timestamptz,
      p_idempotency_key => null,
      p_parent_id => p_job_id,
      p_metadata => coalesce(v_spec -> 'metadata', '{}'::jsonb),
      p_max_attempts => coalesce((v_spec ->> 'max_attempts')::integer, 3),
      p_max_active => (v_spec ->> 'max_active')::integer,
      p_org_id => v_parent.org_id,
      p_concurrency_key => v_spec ->> 'concurrency_key',
      p_user_limit => (v_spec ->> 'user_limit')::integer,
      p_org_limit => case when v_parent.org_id is null then null else (v_spec ->> 'org_limit')::integer end,
      p_key_limit => (v_spec ->> 'key_limit')::integer,
      p_cost_estimate_usd => (v_spec ->> 'cost_estimate_usd')::double precision,
      p_cost_cap_usd => (v_spec ->> 'cost_cap_usd')::double precision,
      p_daily_budget_usd => (v_spec ->> 'daily_budget_usd')::double precision
    );
    update public.ai_jobs c set spawn_key = v_key, spawn_seq = v_count, depth = v_parent.depth + 1
    where c.id = (v_result -> 'job' ->> 'id')::uuid
    returning * into v_child;
    v_count := v_count + 1;
    v_out := v_out || jsonb_build_object('created', true, 'job', to_jsonb(v_child));
  end loop;
  perform public.ai_jobs_refresh_parent(p_job_id, true);
  return to_jsonb(v_out);
end
$$;

-- Wait for children -------------------------------------------------------------------

-- The parent's worker asks: a cancel was requested meanwhile (state "cancelled"), or
-- every waited-for child is finished (state "done",
-- their id/key/status/result/error in spawn order), more failed than p_max_failures
-- (state "failed", same list), or the parent goes back to pending without its lease,
-- attempt refunded, wait_reason waiting_for_children, run_at p_recheck_seconds ahead
-- as a safety net (state "waiting"); a child's trigger wakes it sooner.
create or replace function public.ai_jobs_wait_children_v1(
  p_job_id uuid,
  p_worker text,
  p_keys text[] default null,
  p_max_failures integer default 0,
  p_recheck_seconds double precision default 3600,
  p_usage jsonb default null
)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_parent public.ai_jobs;
  v_active integer;
  v_failed integer;
  v_children jsonb;
begin
  if p_max_failures is null or p_max_failures < 0 then
    raise exception using errcode = '22023', message = 'max_failures must be 0 or more';
  end if;
  if p_recheck_seconds is null or p_recheck_seconds not between 1 and 86400 then
    raise exception using errcode = '22023', message = 'recheck_seconds must be between 1 and 86400';
  end if;
  select * into v_parent from public.ai_jobs j where j.id = p_job_id for update;
  if not found or v_parent.status <> 'running' or v_parent.locked_by is distinct from p_worker then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
  if v_parent.cancel_requested_at is not null then
    return jsonb_build_object('state', 'cancelled');  -- the worker stops and marks it cancelled
  end if;
  select (count(*) filter (where c.status in ('pending', 'running', 'paused')))::integer,
         (count(*) filter (where c.status in ('failed', 'cancelled')))::integer
    into v_active, v_failed
  from public.ai_jobs c
  where c.parent_id = p_job_id and (p_keys is null or c.spawn_key = any (p_keys));
  if v_active = 0 or v_failed > p_max_failures then
    select coalesce(jsonb_agg(jsonb_build_object(
             'id', c.id, 'key', c.spawn_key, 'job_type', c.job_type, 'status', c.status,
             'result', c.result, 'error', c.error) order by c.spawn_seq, c.created_at, c.id), '[]'::jsonb)
      into v_children
    from public.ai_jobs c
    where c.parent_id = p_job_id and (p_keys is null or c.spawn_key = any (p_keys));
    if p_usage is not null then
      update public.ai_jobs j set usage = public.ai_jobs_usage_add(j.usage, p_usage) where j.id = p_job_id;
    end if;
    return jsonb_build_object('state', case when v_failed > p_max_failures then 'failed' else 'done' end,
                              'failed', v_failed, 'children', v_children);
  end if;
  update public.ai_jobs j set
    status = case when j.pause_requested_at is null then 'pending' else 'paused' end,
    attempts = greatest(j.attempts - 1, 0),
    usage = public.ai_jobs_usage_add(j.usage, p_usage),
    wait_reason = case when j.pause_requested_at is null then 'waiting_for_children' else 'paused' end,
    pause_requested_at = null,
    waiting = jsonb_build_object('keys', to_jsonb(p_keys), 'max_failures', p_max_failures),
    locked_by = null,
    lease_expires_at = null,
    run_at = now() + make_interval(secs => p_recheck_seconds)
  where j.id = p_job_id;
  perform public.ai_jobs_refresh_parent(p_job_id, true);
  return jsonb_build_object('state', 'waiting', 'active', v_active, 'failed', v_failed);
end
$$;

-- Sweep: wake every waiting parent that has nothing left to wait for (a child deleted
-- without its trigger, a missed wake-up). Returns how many it woke.
create or replace function public.ai_jobs_resolve_waiting_v1(p_limit integer default 100)
returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  v_id uuid;
  v_woken integer := 0;
begin
  for v_id in
    select j.id from public.ai_jobs j
    where j.status = 'pending' and j.wait_reason = 'waiting_for_children'
      and not exists (
        select 1 from public.ai_jobs c
        where c.parent_id = j.id and c.status in ('pending', 'running', 'paused')
          and (jsonb_typeof(j.waiting -> 'keys') is distinct from 'array'
               or c.spawn_key in (select jsonb_array_elements_text(j.waiting -> 'keys')))
      )
    order by j.run_at
    limit greatest(coalesce(p_limit, 100), 1)
  loop
    if public.ai_jobs_refresh_parent(v_id) then
      v_woken := v_woken + 1;
    end if;
  end loop;
  return v_woken;
end
$$;

-- Tree helpers ------------------------------------------------------------------------

-- Every descendant of a job (not the job itself).
create or replace function public.ai_jobs_descendants(p_job_id uuid)
returns setof uuid
language sql stable
set search_path = ''
as $$
  with recursive tree (id, level) as (
    select c.id, 1 from public.ai_jobs c where c.parent_id = p_job_id
    union all
    select c.id, t.level + 1 from public.ai_jobs c join tree t on c.parent_id = t.id where t.level < 100
  )
  select id from tree
$$;

-- Cancel ------------------------------------------------------------------------------

-- v2 plus: a paused job is cancelled at once, and every unfinished descendant is
-- cancelled the same way (pending/paused: now; running: flagged).
create or replace function public.ai_jobs_request_cancel_v3(p_job_id uuid, p_user_id uuid default null)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
  v_id uuid;
begin
  if v_job.status in ('completed', 'failed') then
    raise exception using errcode = 'AJ003',
      message = format('job %s is %s; only pending, running or paused jobs can be cancelled', p_job_id, v_job.status);
  end if;
  for v_id in
    select d.id from public.ai_jobs d
    where d.id in (select public.ai_jobs_descendants(p_job_id))
      and d.status in ('pending', 'running', 'paused')
    order by d.depth desc, d.id
    for update
  loop
    update public.ai_jobs d set status = 'pending', wait_reason = null, pause_requested_at = null
    where d.id = v_id and d.status = 'paused';
    perform public.ai_jobs_request_cancel_v2(v_id, null);
  end loop;
  if v_job.status = 'paused' then
    return query update public.ai_jobs j set
      status = 'cancelled', cancel_requested_at = now(), finished_at = now(), wait_reason = null,
      pause_requested_at = null
    where j.id = p_job_id returning j.*;
    return;
  end if;
  return query select * from public.ai_jobs_request_cancel_v2(p_job_id, p_user_id);
end
$$;

-- Retry -------------------------------------------------------------------------------

-- v2 plus: the job's failed or cancelled descendants (reached through failed or
-- cancelled ones) run again too; completed children keep their results.
create or replace function public.ai_jobs_retry_v3(
  p_job_id uuid,
  p_user_id uuid default null,
  p_max_active integer default null,
  p_daily_budget_usd double precision default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
begin
  if v_job.status not in ('failed', 'cancelled') then
    raise exception using errcode = 'AJ003',
      message = format('job %s is %s; only failed or cancelled jobs can be retried', p_job_id, v_job.status);
  end if;
  with recursive tree (id) as (
    select c.id from public.ai_jobs c where c.parent_id = p_job_id and c.status in ('failed', 'cancelled')
    union all
    select c.id from public.ai_jobs c join tree t on c.parent_id = t.id where c.status in ('failed', 'cancelled')
  )
  update public.ai_jobs d set
    status = 'pending', attempts = 0, error = null, result = null, run_at = now(),
    cancel_requested_at = null, finished_at = null, wait_reason = null, waiting = null,
    pause_requested_at = null
  where d.id in (select id from tree);
  return query select * from public.ai_jobs_retry_v2(p_job_id, p_user_id, p_max_active, p_daily_budget_usd);
  perform public.ai_jobs_refresh_parent(p_job_id, true);
end
$$;

-- Delete ------------------------------------------------------------------------------

-- v1 plus: refused (AJ003) while any descendant is pending, running or paused.
create or replace function public.ai_jobs_delete_v2(p_job_id uuid, p_user_id uuid default null)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
  v_active integer;
begin
  select count(*) into v_active from public.ai_jobs d
  where d.id in (select public.ai_jobs_descendants(p_job_id)) and d.status in ('pending', 'running', 'paused');
  if v_active > 0 then
    raise exception using errcode = 'AJ003',
      message = format('job %s has %s unfinished child jobs; cancel it (and them) before deleting', p_job_id, v_active);
  end if;
  return query select * from public.ai_jobs_delete_v1(p_job_id, p_user_id);
end
$$;

-- Pause and resume --------------------------------------------------------------------

-- Pending: paused now (never claimed). Running: pause_requested_at set; the worker
-- stops at its next step (ai_jobs_paused_v1). Paused: unchanged. Final statuses:
-- AJ003. Unfinished descendants are paused the same way.
create or replace function public.ai_jobs_pause_v1(p_job_id uuid, p_user_id uuid default null)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
begin
  if v_job.status in ('completed', 'failed', 'cancelled') then
    raise exception using errcode = 'AJ003',
      message = format('job %s is %s; only pending or running jobs can be paused', p_job_id, v_job.status);
  end if;
  if v_job.status = 'running' and v_job.cancel_requested_at is not null
     or v_job.status = 'pending' and v_job.cancel_requested_at is not null then
    raise exception using errcode = 'AJ003', message = format('job %s is being cancelled', p_job_id);
  end if;
  update public.ai_jobs d set
    status = case when d.status = 'pending' then 'paused' else d.status end,
    wait_reason = case when d.status = 'pending' then 'paused' else d.wait_reason end,
    pause_requested_at = case when d.status = 'running' then coalesce(d.pause_requested_at, now())
                              else d.pause_requested_at end
  where (d.id = p_job_id or d.id in (select public.ai_jobs_descendants(p_job_id)))
    and d.status in ('pending', 'running') and d.cancel_requested_at is null;
  return query select * from public.ai_jobs j where j.id = p_job_id;
end
$$;

-- Paused: pending again, due now. Running with a pause request: the request is
-- withdrawn. Pending: unchanged. Final statuses: AJ003. Descendants likewise.
create or replace function public.ai_jobs_resume_v1(p_job_id uuid, p_user_id uuid default null)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
begin
  if v_job.status in ('completed', 'failed', 'cancelled') then
    raise exception using errcode = 'AJ003',
      message = format('job %s is %s; only paused jobs can be resumed', p_job_id, v_job.status);
  end if;
  update public.ai_jobs d set
    status = case when d.status = 'paused' then 'pending' else d.status end,
    run_at = case when d.status = 'paused' then now() else d.run_at end,
    wait_reason = case when d.status = 'paused' then null else d.wait_reason end,
    waiting = case when d.status = 'paused' then null else d.waiting end,
    pause_requested_at = null
  where (d.id = p_job_id or d.id in (select public.ai_jobs_descendants(p_job_id)))
    and (d.status = 'paused' or d.pause_requested_at is not null);
  if found then
    perform pg_notify('ai_jobs_due', '');
  end if;
  return query select * from public.ai_jobs j where j.id = p_job_id;
end
$$;

-- The worker honoured a pause request: paused, lease released, attempt refunded,
-- checkpoints kept.
create or replace function public.ai_jobs_paused_v1(p_job_id uuid, p_worker text, p_usage jsonb default null)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  return query
  update public.ai_jobs j set
    status = 'paused',
    attempts = greatest(j.attempts - 1, 0),
    usage = public.ai_jobs_usage_add(j.usage, p_usage),
    wait_reason = 'paused',
    pause_requested_at = null,
    locked_by = null,
    lease_expires_at = null
  where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

-- Children listing ----------------------------------------------------------------------

-- A job's children, newest first, keyset-paginated on (created_at, id) like
-- ai_jobs_list_v1. AJ002 when the parent is not the caller's.
create or replace function public.ai_jobs_children_v1(
  p_job_id uuid,
  p_user_id uuid default null,
  p_limit integer default 20,
  p_before_created_at timestamptz default null,
  p_before_id uuid default null
)
returns setof public.ai_jobs
language plpgsql stable
set search_path = ''
as $$
begin
  if p_limit is null or p_limit not between 1 and 200 then
    raise exception using errcode = '22023', message = format('limit must be between 1 and 200, got %s', p_limit);
  end if;
  if (p_before_created_at is null) <> (p_before_id is null) then
    raise exception using errcode = '22023', message = 'a cursor needs both created_at and id';
  end if;
  if not exists (
    select 1 from public.ai_jobs j where j.id = p_job_id and (p_user_id is null or j.user_id = p_user_id)
  ) then
    raise exception using errcode = 'AJ002', message = format('job %s not found', p_job_id);
  end if;
  return query select * from public.ai_jobs c
  where c.parent_id = p_job_id
    and (p_user_id is null or c.user_id = p_user_id)
    and (p_before_created_at is null or (c.created_at, c.id) < (p_before_created_at, p_before_id))
  order by c.created_at desc, c.id desc
  limit p_limit;
end
$$;

-- Privileges ----------------------------------------------------------------------------

revoke all on function public.ai_jobs_refresh_parent(uuid, boolean) from public, anon, authenticated;
grant execute on function public.ai_jobs_refresh_parent(uuid, boolean) to service_role;
revoke all on function public.ai_jobs_child_changed() from public, anon, authenticated;
grant execute on function public.ai_jobs_child_changed() to service_role;
revoke all on function public.ai_jobs_spawn_v1(uuid, text, jsonb, integer, integer) from public, anon, authenticated;
grant execute on function public.ai_jobs_spawn_v1(uuid, text, jsonb, integer, integer) to service_role;
revoke all on function public.ai_jobs_wait_children_v1(uuid, text, text[], integer, double precision, jsonb)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_wait_children_v1(uuid, text, text[], integer, double precision, jsonb)
  to service_role;
revoke all on function public.ai_jobs_resolve_waiting_v1(integer) from public, anon, authenticated;
grant execute on function public.ai_jobs_resolve_waiting_v1(integer) to service_role;
revoke all on function public.ai_jobs_descendants(uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_descendants(uuid) to service_role;
revoke all on function public.ai_jobs_request_cancel_v3(uuid, uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_request_cancel_v3(uuid, uuid) to service_role;
revoke all on function public.ai_jobs_retry_v3(uuid, uuid, integer, double precision) from public, anon, authenticated;
grant execute on function public.ai_jobs_retry_v3(uuid, uuid, integer, double precision) to service_role;
revoke all on function public.ai_jobs_delete_v2(uuid, uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_delete_v2(uuid, uuid) to service_role;
revoke all on function public.ai_jobs_pause_v1(uuid, uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_pause_v1(uuid, uuid) to service_role;
revoke all on function public.ai_jobs_resume_v1(uuid, uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_resume_v1(uuid, uuid) to service_role;
revoke all on function public.ai_jobs_paused_v1(uuid, text, jsonb) from public, anon, authenticated;
grant execute on function public.ai_jobs_paused_v1(uuid, text, jsonb) to service_role;
revoke all on function public.ai_jobs_children_v1(uuid, uuid, integer, timestamptz, uuid)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_children_v1(uuid, uuid, integer, timestamptz, uuid) to service_role;
