-- ai-jobs: cancelling a job that has a Claude Message Batch running.
--
-- A large ai.map_batches job submits a Message Batch to Anthropic (its checkpoint
-- step 'claude-batch' holds the batch id), then goes back to pending (ai_jobs_defer_*,
-- wait_reason 'claude_batch') and polls it on each wake-up. Cancelling such a job at
-- once (the rule for pending jobs) would leave the Message Batch running and billing,
-- with nobody to stop it or record its cost. So, for a job with a 'claude-batch'
-- checkpoint (any job type that submits a Message Batch records it under that step
-- name and registers an on_cancel hook):
--
--   ai_jobs_request_cancel_v2  as v1 (20261130000200_ai_jobs_contract.sql), except
--                              that such a job, when pending, is not cancelled at once:
--                              the cancel is recorded (cancel_requested_at) and it
--                              becomes due now, still pending. A worker claims it,
--                              cancels the Message Batch, records what the requests
--                              finished before the cancel cost, then marks it
--                              cancelled (ai_jobs_cancelled_v1). A repeat is a read.
--   ai_jobs_defer_v2           as v1 (20261130000500_ai_jobs_rate_limits.sql), except
--                              that such a job stays pending when a cancel is pending
--                              (the worker waits for the batch to stop, or the cancel
--                              arrived while it polled), so it can still be cleaned up.
--   constraint ai_jobs_pending_cancel_needs_worker replaces ai_jobs_no_pending_cancel:
--                              a pending job may carry a cancel request only then.
-- Idempotent: create or replace, the constraint swap is guarded by pg_constraint,
-- privileges restated. The v1 functions stay for workers of the previous release
-- during a deploy.

do $constraints$
begin
  if not exists (
    select 1 from pg_constraint
    where conrelid = 'public.ai_jobs'::regclass and conname = 'ai_jobs_pending_cancel_needs_worker'
  ) then
    alter table public.ai_jobs add constraint ai_jobs_pending_cancel_needs_worker
      check (status <> 'pending' or cancel_requested_at is null or checkpoints ? 'claude-batch') not valid;
  end if;
  if exists (
    select 1 from pg_constraint
    where conrelid = 'public.ai_jobs'::regclass and conname = 'ai_jobs_pending_cancel_needs_worker'
      and not convalidated
  ) then
    alter table public.ai_jobs validate constraint ai_jobs_pending_cancel_needs_worker;
  end if;
  if exists (
    select 1 from pg_constraint
    where conrelid = 'public.ai_jobs'::regclass and conname = 'ai_jobs_no_pending_cancel'
  ) then
    alter table public.ai_jobs drop constraint ai_jobs_no_pending_cancel;
  end if;
end
$constraints$;

create or replace function public.ai_jobs_request_cancel_v2(p_job_id uuid, p_user_id uuid default null)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
begin
  if v_job.status = 'pending' and v_job.checkpoints ? 'claude-batch' then
    if v_job.cancel_requested_at is null then
      return query update public.ai_jobs j set
        cancel_requested_at = now(), run_at = least(j.run_at, now())
      where j.id = p_job_id returning j.*;
    else
      return next v_job;
    end if;
  elsif v_job.status = 'pending' then
    return query update public.ai_jobs j set
      status = 'cancelled', cancel_requested_at = now(), finished_at = now()
    where j.id = p_job_id returning j.*;
  elsif v_job.status = 'running' and v_job.cancel_requested_at is null then
    return query update public.ai_jobs j set
      cancel_requested_at = now()
    where j.id = p_job_id returning j.*;
  elsif v_job.status in ('running', 'cancelled') then
    return next v_job;
  else
    raise exception using errcode = 'AJ003',
      message = format('job %s is %s; only pending or running jobs can be cancelled', p_job_id, v_job.status);
  end if;
end
$$;

create or replace function public.ai_jobs_defer_v2(
  p_job_id uuid,
  p_worker text,
  p_delay_seconds double precision,
  p_reason text,
  p_message text default null,
  p_usage jsonb default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_delay_seconds is null or p_delay_seconds not between 0 and 86400 then
    raise exception using errcode = '22023',
      message = format('delay_seconds must be between 0 and 86400, got %s', p_delay_seconds);
  end if;
  if p_reason is null or p_reason !~ '^[a-z][a-z0-9_]{0,49}$' then
    raise exception using errcode = '22023', message = 'reason must be a short snake_case word, e.g. rate_limited';
  end if;
  return query
  update public.ai_jobs j set
    status = case when j.cancel_requested_at is null or j.checkpoints ? 'claude-batch'
                  then 'pending' else 'cancelled' end,
    attempts = case when j.cancel_requested_at is null or j.checkpoints ? 'claude-batch'
                    then greatest(j.attempts - 1, 0) else j.attempts end,
    usage = public.ai_jobs_usage_add(j.usage, p_usage),
    progress_message = coalesce(left(p_message, 1000), j.progress_message),
    wait_reason = case when j.cancel_requested_at is null or j.checkpoints ? 'claude-batch' then p_reason end,
    locked_by = null,
    lease_expires_at = null,
    run_at = now() + make_interval(secs => p_delay_seconds),
    finished_at = case when j.cancel_requested_at is null or j.checkpoints ? 'claude-batch' then null else now() end
  where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

revoke all on function public.ai_jobs_request_cancel_v2(uuid, uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_request_cancel_v2(uuid, uuid) to service_role;
revoke all on function public.ai_jobs_defer_v2(uuid, text, double precision, text, text, jsonb)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_defer_v2(uuid, text, double precision, text, text, jsonb)
  to service_role;
