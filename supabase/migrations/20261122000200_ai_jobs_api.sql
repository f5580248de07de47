-- ai-jobs 2/2: the queue's SQL API (versioned *_v1 functions), metrics views,
-- and the lock-down that keeps all of it away from anon and authenticated.
--
-- Error codes raised here (SQLSTATE), mapped to Python exceptions by ai_jobs.errors:
--   AJ001 active job limit reached      AJ002 job not found
--   AJ003 state forbids the operation   AJ004 lease lost (not running under this worker)
--   AJ005 idempotency key reused with different parameters
--   22023 invalid argument
-- Idempotent: every object is created with "or replace" or guarded.

-- Sum two usage objects key by key (numbers add up; other values: newest wins).
create or replace function public.ai_jobs_usage_add(p_total jsonb, p_delta jsonb)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select case
    when p_delta is null or jsonb_typeof(p_delta) <> 'object' then coalesce(p_total, '{}'::jsonb)
    else coalesce((
      select jsonb_object_agg(
        k,
        case
          when jsonb_typeof(p_delta -> k) = 'number'
           and jsonb_typeof(coalesce(p_total -> k, '0'::jsonb)) = 'number'
            then to_jsonb(coalesce((p_total ->> k)::numeric, 0) + (p_delta ->> k)::numeric)
          else coalesce(p_delta -> k, p_total -> k)
        end)
      from (
        select jsonb_object_keys(coalesce(p_total, '{}'::jsonb))
        union
        select jsonb_object_keys(p_delta)
      ) as keys (k)
    ), '{}'::jsonb)
  end
$$;

-- Raise the right error when a worker-side update matched no row.
create or replace function public.ai_jobs_raise_not_leased(p_job_id uuid, p_worker text)
returns void
language plpgsql stable
set search_path = ''
as $$
declare
  v_status text;
  v_locked_by text;
begin
  select j.status, j.locked_by into v_status, v_locked_by
  from public.ai_jobs j where j.id = p_job_id;
  if not found then
    raise exception using errcode = 'AJ002', message = format('job %s not found', p_job_id);
  end if;
  raise exception using
    errcode = 'AJ004',
    message = format('job %s is not running under worker %s (status %s, locked by %s)',
                     p_job_id, p_worker, v_status, coalesce(v_locked_by, 'nobody')),
    hint = 'the lease expired and the job was reclaimed, or it was finished elsewhere';
end
$$;

create or replace function public.ai_jobs_check_lease_seconds(p_lease_seconds integer)
returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_lease_seconds is null or p_lease_seconds not between 1 and 3600 then
    raise exception using errcode = '22023',
      message = format('lease_seconds must be between 1 and 3600, got %s', p_lease_seconds);
  end if;
end
$$;

-- Enqueue -----------------------------------------------------------------------

create or replace function public.ai_jobs_enqueue_v1(
  p_user_id uuid,
  p_job_type text,
  p_input jsonb default '{}'::jsonb,
  p_priority integer default 0,
  p_run_at timestamptz default null,
  p_idempotency_key text default null,
  p_parent_id uuid default null,
  p_metadata jsonb default '{}'::jsonb,
  p_max_attempts integer default 3,
  p_max_active integer default null
)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs;
  v_active integer;
begin
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'user_id is required';
  end if;
  -- One enqueue per user at a time, so the cap and the idempotency check are exact.
  perform pg_advisory_xact_lock(hashtextextended('ai_jobs.enqueue:' || p_user_id::text, 0));

  if p_idempotency_key is not null then
    select * into v_job from public.ai_jobs j
    where j.user_id = p_user_id and j.idempotency_key = p_idempotency_key;
    if found then
      if v_job.job_type <> p_job_type or v_job.input <> coalesce(p_input, '{}'::jsonb) then
        raise exception using errcode = 'AJ005',
          message = format('idempotency key %L was already used for a different request (job %s)',
                           p_idempotency_key, v_job.id),
          hint = 'use a new idempotency key for a different job';
      end if;
      return jsonb_build_object('created', false, 'job', to_jsonb(v_job));
    end if;
  end if;

  if p_max_active is not null then
    select count(*) into v_active from public.ai_jobs j
    where j.user_id = p_user_id and j.status in ('pending', 'running');
    if v_active >= p_max_active then
      raise exception using errcode = 'AJ001',
        message = format('active job limit reached: %s of %s jobs pending or running', v_active, p_max_active),
        hint = 'wait for a job to finish, or cancel one';
    end if;
  end if;

  if p_parent_id is not null and not exists (
    select 1 from public.ai_jobs j where j.id = p_parent_id and j.user_id = p_user_id
  ) then
    raise exception using errcode = 'AJ002', message = format('parent job %s not found', p_parent_id);
  end if;

  insert into public.ai_jobs (user_id, job_type, input, priority, run_at, idempotency_key,
                              parent_id, metadata, max_attempts)
  values (p_user_id, p_job_type, coalesce(p_input, '{}'::jsonb), coalesce(p_priority, 0),
          coalesce(p_run_at, now()), p_idempotency_key, p_parent_id,
          coalesce(p_metadata, '{}'::jsonb), coalesce(p_max_attempts, 3))
  returning * into v_job;

  return jsonb_build_object('created', true, 'job', to_jsonb(v_job));
end
$$;

-- Worker side -------------------------------------------------------------------

-- Return running jobs whose lease ran out to pending (or failed when their
-- attempts are spent, or cancelled when a cancel was requested).
create or replace function public.ai_jobs_reap_v1(p_limit integer default 100)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  return query
  with expired as (
    select j.id,
      case
        when j.cancel_requested_at is not null then 'cancelled'
        when j.attempts >= j.max_attempts then 'failed'
        else 'pending'
      end as next_status
    from public.ai_jobs j
    where j.status = 'running' and j.lease_expires_at < now()
    order by j.lease_expires_at
    limit greatest(coalesce(p_limit, 100), 1)
    for update skip locked
  )
  update public.ai_jobs j set
    status = e.next_status,
    locked_by = null,
    lease_expires_at = null,
    run_at = case when e.next_status = 'pending' then now() else j.run_at end,
    finished_at = case when e.next_status = 'pending' then null else now() end,
    error = case
      when e.next_status = 'cancelled' then j.error
      else jsonb_build_object(
        'code', 'lease_expired',
        'message', format('worker %s stopped renewing its lease (attempt %s of %s)',
                          j.locked_by, j.attempts, j.max_attempts),
        'retryable', e.next_status = 'pending')
    end
  from expired e
  where j.id = e.id
  returning j.*;
end
$$;

-- Claim up to p_limit due jobs for p_worker. Each job goes to exactly one
-- caller (FOR UPDATE SKIP LOCKED) and spends one attempt. Expired leases are
-- reaped first, so any invocation recovers jobs of crashed workers.
create or replace function public.ai_jobs_claim_v1(
  p_worker text,
  p_limit integer default 1,
  p_lease_seconds integer default 30,
  p_job_types text[] default null,
  p_job_id uuid default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_worker is null or length(p_worker) not between 1 and 200 then
    raise exception using errcode = '22023', message = 'worker id must be 1 to 200 characters';
  end if;
  if p_limit is null or p_limit not between 1 and 1000 then
    raise exception using errcode = '22023', message = format('limit must be between 1 and 1000, got %s', p_limit);
  end if;
  perform public.ai_jobs_check_lease_seconds(p_lease_seconds);

  perform public.ai_jobs_reap_v1(100);

  return query
  with picked as (
    select j.id
    from public.ai_jobs j
    where j.status = 'pending'
      and j.run_at <= now()
      and (p_job_types is null or j.job_type = any (p_job_types))
      and (p_job_id is null or j.id = p_job_id)
    order by j.priority desc, j.run_at, j.id
    limit p_limit
    for update skip locked
  )
  update public.ai_jobs j set
    status = 'running',
    attempts = j.attempts + 1,
    locked_by = p_worker,
    lease_expires_at = now() + make_interval(secs => p_lease_seconds),
    started_at = coalesce(j.started_at, now())
  from picked
  where j.id = picked.id
  returning j.*;
end
$$;

-- Extend the lease; the returned row tells the worker about cancel requests.
create or replace function public.ai_jobs_heartbeat_v1(
  p_job_id uuid,
  p_worker text,
  p_lease_seconds integer default 30
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  perform public.ai_jobs_check_lease_seconds(p_lease_seconds);
  return query
  update public.ai_jobs j set
    lease_expires_at = greatest(j.lease_expires_at, now() + make_interval(secs => p_lease_seconds))
  where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

create or replace function public.ai_jobs_progress_v1(
  p_job_id uuid,
  p_worker text,
  p_progress integer,
  p_message text default null,
  p_lease_seconds integer default null
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
  return query
  update public.ai_jobs j set
    progress = p_progress,
    progress_message = coalesce(left(p_message, 1000), j.progress_message),
    lease_expires_at = case
      when p_lease_seconds is null then j.lease_expires_at
      else greatest(j.lease_expires_at, now() + make_interval(secs => p_lease_seconds))
    end
  where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

-- Store a completed step's result; on retry or continuation the step is skipped.
create or replace function public.ai_jobs_checkpoint_v1(
  p_job_id uuid,
  p_worker text,
  p_step text,
  p_value jsonb,
  p_usage jsonb default null,
  p_progress integer default null,
  p_message text default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_step is null or length(p_step) not between 1 and 200 then
    raise exception using errcode = '22023', message = 'step name must be 1 to 200 characters';
  end if;
  if p_progress is not null and p_progress not between 0 and 100 then
    raise exception using errcode = '22023', message = format('progress must be between 0 and 100, got %s', p_progress);
  end if;
  return query
  update public.ai_jobs j set
    checkpoints = j.checkpoints || jsonb_build_object(p_step, coalesce(p_value, 'null'::jsonb)),
    usage = public.ai_jobs_usage_add(j.usage, p_usage),
    progress = coalesce(p_progress, j.progress),
    progress_message = coalesce(left(p_message, 1000), j.progress_message)
  where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

create or replace function public.ai_jobs_complete_v1(
  p_job_id uuid,
  p_worker text,
  p_result jsonb,
  p_usage jsonb default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  return query
  update public.ai_jobs j set
    status = 'completed',
    result = coalesce(p_result, 'null'::jsonb),
    error = null,
    progress = 100,
    usage = public.ai_jobs_usage_add(j.usage, p_usage),
    locked_by = null,
    lease_expires_at = null,
    finished_at = now()
  where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

-- Record a failure. Retryable errors with attempts left go back to pending at
-- p_retry_at (a server's retry-after) or after exponential backoff with
-- jitter; everything else fails the job for good.
create or replace function public.ai_jobs_fail_v1(
  p_job_id uuid,
  p_worker text,
  p_error jsonb,
  p_retry_at timestamptz default null,
  p_usage jsonb default null,
  p_backoff_base_seconds double precision default 5,
  p_backoff_max_seconds double precision default 3600
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_error is null or jsonb_typeof(p_error) <> 'object'
     or jsonb_typeof(p_error -> 'code') <> 'string'
     or jsonb_typeof(p_error -> 'message') <> 'string'
     or jsonb_typeof(p_error -> 'retryable') <> 'boolean' then
    raise exception using errcode = '22023',
      message = 'error must be an object with code (string), message (string) and retryable (boolean)';
  end if;
  return query
  with target as (
    select j.id,
      (p_error ->> 'retryable')::boolean and j.attempts < j.max_attempts
        and j.cancel_requested_at is null as will_retry
    from public.ai_jobs j
    where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
    for update
  )
  update public.ai_jobs j set
    status = case when t.will_retry then 'pending' else 'failed' end,
    error = p_error,
    usage = public.ai_jobs_usage_add(j.usage, p_usage),
    locked_by = null,
    lease_expires_at = null,
    run_at = case
      when not t.will_retry then j.run_at
      when p_retry_at is not null then greatest(p_retry_at, now())
      else now() + make_interval(secs =>
        least(p_backoff_max_seconds, p_backoff_base_seconds * power(2, j.attempts - 1))
        * (0.5 + random() * 0.5))
    end,
    finished_at = case when t.will_retry then null else now() end
  from target t
  where j.id = t.id
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

-- Give a running job back without spending an attempt (continuation in a new
-- invocation). Completed step checkpoints stay; a pending cancel wins.
create or replace function public.ai_jobs_release_v1(
  p_job_id uuid,
  p_worker text,
  p_run_at timestamptz default null,
  p_usage jsonb default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  return query
  update public.ai_jobs j set
    status = case when j.cancel_requested_at is null then 'pending' else 'cancelled' end,
    attempts = case when j.cancel_requested_at is null then greatest(j.attempts - 1, 0) else j.attempts end,
    usage = public.ai_jobs_usage_add(j.usage, p_usage),
    locked_by = null,
    lease_expires_at = null,
    run_at = coalesce(p_run_at, now()),
    finished_at = case when j.cancel_requested_at is null then null else now() end
  where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

-- The worker saw a cancel request and stopped.
create or replace function public.ai_jobs_cancelled_v1(
  p_job_id uuid,
  p_worker text,
  p_usage jsonb default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  return query
  update public.ai_jobs j set
    status = 'cancelled',
    cancel_requested_at = coalesce(j.cancel_requested_at, now()),
    usage = public.ai_jobs_usage_add(j.usage, p_usage),
    locked_by = null,
    lease_expires_at = null,
    finished_at = now()
  where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

-- Owner side (p_user_id scopes to one owner; null = operator) --------------------

create or replace function public.ai_jobs_locked_for_owner(p_job_id uuid, p_user_id uuid)
returns public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs;
begin
  select * into v_job from public.ai_jobs j
  where j.id = p_job_id and (p_user_id is null or j.user_id = p_user_id)
  for update;
  if not found then
    raise exception using errcode = 'AJ002', message = format('job %s not found', p_job_id);
  end if;
  return v_job;
end
$$;

-- Pending: cancelled at once. Running: flagged; the worker stops at its next
-- step or progress call. Cancelled: unchanged. Completed or failed: AJ003.
create or replace function public.ai_jobs_request_cancel_v1(p_job_id uuid, p_user_id uuid default null)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
begin
  if v_job.status = 'pending' then
    return query update public.ai_jobs j set
      status = 'cancelled', cancel_requested_at = now(), finished_at = now()
    where j.id = p_job_id returning j.*;
  elsif v_job.status = 'running' then
    return query update public.ai_jobs j set
      cancel_requested_at = coalesce(j.cancel_requested_at, now())
    where j.id = p_job_id returning j.*;
  elsif v_job.status = 'cancelled' then
    return next v_job;
  else
    raise exception using errcode = 'AJ003',
      message = format('job %s is %s; only pending or running jobs can be cancelled', p_job_id, v_job.status);
  end if;
end
$$;

-- Run a failed or cancelled job again with fresh attempts; completed step
-- checkpoints are kept, so finished work is not paid for twice.
create or replace function public.ai_jobs_retry_v1(
  p_job_id uuid,
  p_user_id uuid default null,
  p_max_active integer default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs;
  v_active integer;
begin
  v_job := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
  if v_job.status not in ('failed', 'cancelled') then
    raise exception using errcode = 'AJ003',
      message = format('job %s is %s; only failed or cancelled jobs can be retried', p_job_id, v_job.status);
  end if;
  if p_max_active is not null then
    perform pg_advisory_xact_lock(hashtextextended('ai_jobs.enqueue:' || v_job.user_id::text, 0));
    select count(*) into v_active from public.ai_jobs j
    where j.user_id = v_job.user_id and j.status in ('pending', 'running');
    if v_active >= p_max_active then
      raise exception using errcode = 'AJ001',
        message = format('active job limit reached: %s of %s jobs pending or running', v_active, p_max_active),
        hint = 'wait for a job to finish, or cancel one';
    end if;
  end if;
  return query update public.ai_jobs j set
    status = 'pending',
    attempts = 0,
    error = null,
    result = null,
    run_at = now(),
    cancel_requested_at = null,
    finished_at = null
  where j.id = p_job_id returning j.*;
end
$$;

create or replace function public.ai_jobs_delete_v1(p_job_id uuid, p_user_id uuid default null)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
begin
  if v_job.status not in ('completed', 'failed', 'cancelled') then
    raise exception using errcode = 'AJ003',
      message = format('job %s is %s; cancel it before deleting', p_job_id, v_job.status);
  end if;
  return query delete from public.ai_jobs j where j.id = p_job_id returning j.*;
end
$$;

create or replace function public.ai_jobs_get_v1(p_job_id uuid, p_user_id uuid default null)
returns setof public.ai_jobs
language plpgsql stable
set search_path = ''
as $$
begin
  return query select * from public.ai_jobs j
  where j.id = p_job_id and (p_user_id is null or j.user_id = p_user_id);
  if not found then
    raise exception using errcode = 'AJ002', message = format('job %s not found', p_job_id);
  end if;
end
$$;

-- Newest first, keyset-paginated on (created_at, id).
create or replace function public.ai_jobs_list_v1(
  p_user_id uuid default null,
  p_status text default null,
  p_job_type text default null,
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
  return query select * from public.ai_jobs j
  where (p_user_id is null or j.user_id = p_user_id)
    and (p_status is null or j.status = p_status)
    and (p_job_type is null or j.job_type = p_job_type)
    and (p_before_created_at is null or (j.created_at, j.id) < (p_before_created_at, p_before_id))
  order by j.created_at desc, j.id desc
  limit p_limit;
end
$$;

-- Maintenance ---------------------------------------------------------------------

-- Delete finished jobs past retention (completed 30 days; failed and cancelled 7 days).
create or replace function public.ai_jobs_purge_v1(
  p_completed_retention interval default interval '30 days',
  p_failed_retention interval default interval '7 days',
  p_limit integer default 1000
)
returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  v_deleted integer;
begin
  with doomed as (
    select j.id from public.ai_jobs j
    where (j.status = 'completed' and j.finished_at < now() - p_completed_retention)
       or (j.status in ('failed', 'cancelled') and j.finished_at < now() - p_failed_retention)
    limit greatest(coalesce(p_limit, 1000), 1)
    for update skip locked
  )
  delete from public.ai_jobs j using doomed d where j.id = d.id;
  get diagnostics v_deleted = row_count;
  return v_deleted;
end
$$;

-- Due pending jobs nobody picked up for a while (a hand-off that never arrived):
-- the sweeper asks for worker invocations for them.
create or replace function public.ai_jobs_stale_pending_v1(
  p_older_than_seconds integer default 60,
  p_limit integer default 100
)
returns setof public.ai_jobs
language sql stable
set search_path = ''
as $$
  select * from public.ai_jobs j
  where j.status = 'pending'
    and j.run_at <= now() - make_interval(secs => greatest(p_older_than_seconds, 0))
  order by j.priority desc, j.run_at, j.id
  limit greatest(coalesce(p_limit, 100), 1)
$$;

-- Metrics -------------------------------------------------------------------------

create or replace view public.ai_jobs_queue_depth
with (security_invoker = true) as
select
  j.job_type,
  j.status,
  count(*)::bigint as jobs,
  min(j.run_at) filter (where j.status = 'pending') as oldest_run_at
from public.ai_jobs j
where j.status in ('pending', 'running')
group by j.job_type, j.status;

create or replace view public.ai_jobs_stats_24h
with (security_invoker = true) as
select
  j.job_type,
  count(*) filter (where j.status = 'completed')::bigint as completed,
  count(*) filter (where j.status = 'failed')::bigint as failed,
  count(*) filter (where j.status = 'cancelled')::bigint as cancelled,
  round(
    (count(*) filter (where j.status = 'failed'))::numeric
    / nullif(count(*) filter (where j.status in ('completed', 'failed')), 0), 4
  ) as failure_rate,
  percentile_cont(0.5) within group (order by extract(epoch from j.finished_at - j.started_at))
    filter (where j.status = 'completed') as p50_run_seconds,
  percentile_cont(0.95) within group (order by extract(epoch from j.finished_at - j.started_at))
    filter (where j.status = 'completed') as p95_run_seconds
from public.ai_jobs j
where j.status in ('completed', 'failed', 'cancelled')
  and j.finished_at > now() - interval '24 hours'
group by j.job_type;

create or replace function public.ai_jobs_queue_depth_v1()
returns setof public.ai_jobs_queue_depth
language sql stable
set search_path = ''
as $$ select * from public.ai_jobs_queue_depth order by job_type, status $$;

create or replace function public.ai_jobs_stats_24h_v1()
returns setof public.ai_jobs_stats_24h
language sql stable
set search_path = ''
as $$ select * from public.ai_jobs_stats_24h order by job_type $$;

-- Lock-down ------------------------------------------------------------------------
-- Supabase's default privileges hand every new function and view in public to
-- anon and authenticated (and Postgres gives functions to PUBLIC). None of
-- these are for browsers: only service_role (the server) may use them.
do $lockdown$
declare
  r record;
begin
  for r in
    select p.oid::regprocedure as sig
    from pg_proc p
    join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public' and p.proname like 'ai\_jobs\_%'
  loop
    execute format('revoke all on function %s from public, anon, authenticated', r.sig);
    execute format('grant execute on function %s to service_role', r.sig);
  end loop;
end
$lockdown$;

revoke all on table public.ai_jobs_queue_depth, public.ai_jobs_stats_24h from public, anon, authenticated;
grant select on table public.ai_jobs_queue_depth, public.ai_jobs_stats_24h to service_role;
