-- ai-jobs: the worker's fast path (issue 13).
--
-- 1. ai_jobs_complete_claim_v1: complete the jobs a worker finished (batch N) and
--    claim its next jobs (batch N+1) in one statement, so a busy worker pays one round
--    trip and one commit per batch instead of two. The completion is exactly
--    ai_jobs_complete_many_v1 (jobs this worker no longer holds are skipped) and the
--    claim is exactly ai_jobs_claim_v2 (reaping, fairness across owners, user/org/key
--    concurrency limits, one attempt spent per claim, SKIP LOCKED), in that order, so
--    the finished jobs no longer count against their owners' limits when the claim
--    looks. Returns {"completed": [ids], "claimed": [ai_jobs rows as JSON]}.
-- 2. A statement-level trigger that sends NOTIFY ai_jobs_due once per inserting
--    statement (deduplicated per transaction by PostgreSQL) when it inserted a job due
--    now, so `ai-jobs worker` on a direct connection starts it without waiting for its
--    next poll. Nothing listens through a transaction pooler (Supavisor port 6543):
--    there workers keep polling.
-- Idempotent: create or replace, privileges restated.

create or replace function public.ai_jobs_complete_claim_v1(
  p_worker text,
  p_results jsonb default '[]'::jsonb,
  p_limit integer default 1,
  p_lease_seconds integer default 30,
  p_job_types text[] default null
)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_completed jsonb := '[]'::jsonb;
  v_claimed jsonb;
begin
  if p_results is null or jsonb_typeof(p_results) <> 'array' then
    raise exception using errcode = '22023', message = 'results must be a JSON array of {id, result, usage}';
  end if;
  if jsonb_array_length(p_results) > 0 then
    select coalesce(jsonb_agg(c.id), '[]'::jsonb) into v_completed
    from public.ai_jobs_complete_many_v1(p_worker, p_results) c;
  end if;
  select coalesce(jsonb_agg(to_jsonb(j)), '[]'::jsonb) into v_claimed
  from public.ai_jobs_claim_v2(p_worker, p_limit, p_lease_seconds, p_job_types) j;
  return jsonb_build_object('completed', v_completed, 'claimed', v_claimed);
end
$$;

revoke all on function public.ai_jobs_complete_claim_v1(text, jsonb, integer, integer, text[])
  from public, anon, authenticated;
grant execute on function public.ai_jobs_complete_claim_v1(text, jsonb, integer, integer, text[]) to service_role;

-- Wake-ups for listening workers -------------------------------------------------------

create or replace function public.ai_jobs_notify_due_v1()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if exists (select 1 from inserted i where i.status = 'pending' and i.run_at <= now()) then
    perform pg_notify('ai_jobs_due', '');
  end if;
  return null;
end
$$;

revoke all on function public.ai_jobs_notify_due_v1() from public, anon, authenticated;
grant execute on function public.ai_jobs_notify_due_v1() to service_role;

create or replace trigger ai_jobs_notify_due
  after insert on public.ai_jobs
  referencing new table as inserted
  for each statement execute function public.ai_jobs_notify_due_v1();

-- Bulk enqueue -----------------------------------------------------------------------

-- Up to 1000 jobs in one statement and one transaction. Each element goes through
-- ai_jobs_enqueue_v3 with the same arguments a single create would pass, so every
-- check applies per job, in order, under the same per-user locks: job type and
-- run_at validation, idempotency keys, the per-user active-job cap (p_max_active),
-- concurrency limits stored on the row, and the rolling 24 h Claude budget (a job
-- counts the ones before it in the batch). All or nothing: the first refused job
-- raises its error (SQLSTATE, message and DETAIL as for a single create) and
-- nothing is inserted. (No per-job exception block: that would cost a
-- subtransaction per job.)
-- p_jobs: [{"user_id", "job_type", "input", "priority", "run_at", "idempotency_key",
--           "parent_id", "metadata", "max_attempts", "max_active", "org_id",
--           "concurrency_key", "user_limit", "org_limit", "key_limit",
--           "cost_estimate_usd", "cost_cap_usd", "daily_budget_usd"}, ...]
-- Returns the results in order: [{"job": {...}, "created": bool}, ...].
create or replace function public.ai_jobs_enqueue_many_v1(p_jobs jsonb)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_out jsonb[] := '{}';  -- appended in place (a growing jsonb would be copied per job)
  v_job jsonb;
  v_index integer := 0;
begin
  if p_jobs is null or jsonb_typeof(p_jobs) <> 'array' then
    raise exception using errcode = '22023', message = 'jobs must be a JSON array of job objects';
  end if;
  if jsonb_array_length(p_jobs) > 1000 then
    raise exception using errcode = '22023',
      message = format('at most 1000 jobs per call, got %s', jsonb_array_length(p_jobs));
  end if;
  for v_job in select value from jsonb_array_elements(p_jobs) loop
    if jsonb_typeof(v_job) <> 'object' or jsonb_typeof(v_job -> 'user_id') <> 'string'
       or jsonb_typeof(v_job -> 'job_type') <> 'string' then
      raise exception using errcode = '22023',
        message = format('job %s: an object with user_id and job_type is required', v_index);
    end if;
    v_out := v_out || public.ai_jobs_enqueue_v3(
      p_user_id => (v_job ->> 'user_id')::uuid,
      p_job_type => v_job ->> 'job_type',
      p_input => coalesce(v_job -> 'input', '{}'::jsonb),
      p_priority => coalesce((v_job ->> 'priority')::integer, 0),
      p_run_at => (v_job ->> 'run_at')::timestamptz,
      p_idempotency_key => v_job ->> 'idempotency_key',
      p_parent_id => (v_job ->> 'parent_id')::uuid,
      p_metadata => coalesce(v_job -> 'metadata', '{}'::jsonb),
      p_max_attempts => coalesce((v_job ->> 'max_attempts')::integer, 3),
      p_max_active => (v_job ->> 'max_active')::integer,
      p_org_id => v_job ->> 'org_id',
      p_concurrency_key => v_job ->> 'concurrency_key',
      p_user_limit => (v_job ->> 'user_limit')::integer,
      p_org_limit => (v_job ->> 'org_limit')::integer,
      p_key_limit => (v_job ->> 'key_limit')::integer,
      p_cost_estimate_usd => (v_job ->> 'cost_estimate_usd')::double precision,
      p_cost_cap_usd => (v_job ->> 'cost_cap_usd')::double precision,
      p_daily_budget_usd => (v_job ->> 'daily_budget_usd')::double precision
    );
    v_index := v_index + 1;
  end loop;
  return to_jsonb(v_out);
end
$$;

revoke all on function public.ai_jobs_enqueue_many_v1(jsonb) from public, anon, authenticated;
grant execute on function public.ai_jobs_enqueue_many_v1(jsonb) to service_role;
