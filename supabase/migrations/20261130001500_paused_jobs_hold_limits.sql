-- A paused job keeps its place under the user's limits.
--
-- Before: the active-job cap (p_max_active) and the daily budget's reservations
-- counted pending and running jobs only, and a resume made paused jobs pending
-- again without either check. So a user could create up to the cap, pause those
-- jobs, create as many again, and resume them all: no bound on queued jobs, on
-- what they may spend against the budget, or on paused rows (never purged).
--
-- Now every unfinished job counts (pending, running or paused):
--   * ai_jobs_check_budget reserves what paused jobs may still spend too (it is the
--     helper behind every create and retry, so old callers get this as well);
--   * ai_jobs_enqueue_v4 / ai_jobs_enqueue_many_v2 / ai_jobs_retry_v4 apply the cap
--     to pending + running + paused, then call the v3 / v1 / v3 function without it;
--   * ai_jobs_retry_v4 checks the cap on the job retried only, before its failed
--     children are made pending (v3 counted them, so a tree with 20 or more failed
--     children could never be retried; children are never refused by the cap);
--   * ai_jobs_request_cancel_v4: a paused job holding a Claude Message Batch
--     (a `claude-batch` step) is left to a worker to cancel the batch, as a pending
--     one is (v3 cancelled it at once, so the batch ran on, unbilled on the job);
--   * ai_jobs_schedule_set_paused_v1: a repeat no longer writes the row.
-- Idempotent: indexes with if (not) exists, functions with create or replace.

create index if not exists ai_jobs_owner_unfinished_idx
  on public.ai_jobs (user_id) where status in ('pending', 'running', 'paused');
-- Covered by the index above (its predicate implies this one's): one index, not two, per write.
drop index if exists public.ai_jobs_owner_active_idx;

-- The budget check (see 20261130000900): paused jobs reserve what they may still spend.
create or replace function public.ai_jobs_check_budget(
  p_user_id uuid,
  p_reserve numeric,
  p_budget numeric,
  p_exclude uuid default null
)
returns void
language plpgsql volatile
set search_path = ''
as $$
declare
  v_spent numeric;
  v_reserved numeric;
  v_excess numeric;
  v_free_at timestamptz;
  v_retry bigint;
begin
  if p_budget is null or coalesce(p_reserve, 0) <= 0 then
    return;
  end if;
  if p_budget < 0 then
    raise exception using errcode = '22023', message = format('daily budget must be >= 0, got %s', p_budget);
  end if;
  delete from public.ai_jobs_spend s where s.user_id = p_user_id and s.at <= now() - interval '24 hours';
  select coalesce(sum(s.cost_usd), 0) into v_spent
  from public.ai_jobs_spend s where s.user_id = p_user_id and s.at > now() - interval '24 hours';
  select coalesce(sum(greatest(j.cost_cap_usd - public.ai_jobs_usage_cost(j.usage), 0)), 0) into v_reserved
  from public.ai_jobs j
  where j.user_id = p_user_id and j.status in ('pending', 'running', 'paused') and j.cost_cap_usd is not null
    and j.id is distinct from p_exclude;
  v_excess := v_spent + v_reserved + p_reserve - p_budget;
  if v_excess <= 0 then
    return;
  end if;
  select w.at into v_free_at from (
    select s.at, sum(s.cost_usd) over (order by s.at, s.id) as freed
    from public.ai_jobs_spend s where s.user_id = p_user_id and s.at > now() - interval '24 hours'
  ) w
  where w.freed >= v_excess
  order by w.at
  limit 1;
  if v_free_at is not null then
    v_retry := greatest(1, ceil(extract(epoch from (v_free_at + interval '24 hours' - now()))))::bigint;
  end if;
  raise exception using errcode = 'AJ006',
    message = format('daily Claude budget reached: $%s recorded in the last 24 h, $%s held by your unfinished jobs '
                     '(pending, running or paused) and $%s for this job would pass the $%s budget',
                     round(v_spent, 4), round(v_reserved, 4), round(p_reserve, 4), round(p_budget, 4)),
    detail = jsonb_build_object(
      'budget_usd', round(p_budget, 6), 'spent_usd', round(v_spent, 6), 'reserved_usd', round(v_reserved, 6),
      'job_cap_usd', round(p_reserve, 6), 'retry_after_seconds', v_retry)::text,
    hint = case when v_retry is null
      then 'wait for your unfinished jobs to finish (they usually cost less than they hold), or cancel a pending or paused one'
      else 'try again when earlier spend has left the 24-hour window, or submit a smaller job' end;
end
$$;

-- AJ001 when the user has p_max_active or more unfinished jobs. The caller holds the
-- per-user enqueue lock. No cap when p_max_active is null.
create or replace function public.ai_jobs_check_active_cap(p_user_id uuid, p_max_active integer)
returns void
language plpgsql stable
set search_path = ''
as $$
declare
  v_active integer;
begin
  if p_max_active is null then
    return;
  end if;
  select count(*) into v_active from public.ai_jobs j
  where j.user_id = p_user_id and j.status in ('pending', 'running', 'paused');
  if v_active >= p_max_active then
    raise exception using errcode = 'AJ001',
      message = format('active job limit reached: %s of %s jobs pending, running or paused', v_active, p_max_active),
      hint = 'wait for a job to finish, or cancel a pending or paused one';
  end if;
end
$$;

-- v3 with the cap on unfinished jobs. A repeated idempotency key still returns its
-- job at the cap (v3 answers it before any limit).
create or replace function public.ai_jobs_enqueue_v4(
  p_user_id uuid,
  p_job_type text,
  p_input jsonb default '{}'::jsonb,
  p_priority integer default 0,
  p_run_at timestamptz default null,
  p_idempotency_key text default null,
  p_parent_id uuid default null,
  p_metadata jsonb default '{}'::jsonb,
  p_max_attempts integer default 3,
  p_max_active integer default null,
  p_org_id text default null,
  p_concurrency_key text default null,
  p_user_limit integer default null,
  p_org_limit integer default null,
  p_key_limit integer default null,
  p_cost_estimate_usd double precision default null,
  p_cost_cap_usd double precision default null,
  p_daily_budget_usd double precision default null
)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_user_id is not null and p_max_active is not null then
    perform pg_advisory_xact_lock(hashtextextended('ai_jobs.enqueue:' || p_user_id::text, 0));
    if p_idempotency_key is null or not exists (
      select 1 from public.ai_jobs j where j.user_id = p_user_id and j.idempotency_key = p_idempotency_key
    ) then
      perform public.ai_jobs_check_active_cap(p_user_id, p_max_active);
    end if;
  end if;
  return public.ai_jobs_enqueue_v3(
    p_user_id, p_job_type, p_input, p_priority, p_run_at, p_idempotency_key, p_parent_id, p_metadata,
    p_max_attempts, null, p_org_id, p_concurrency_key, p_user_limit, p_org_limit, p_key_limit,
    p_cost_estimate_usd, p_cost_cap_usd, p_daily_budget_usd);
end
$$;

-- v1 with the cap on unfinished jobs: each job is checked (counting those before it
-- in the batch), then inserted by v1 as a batch of one. All or nothing, as v1.
create or replace function public.ai_jobs_enqueue_many_v2(p_jobs jsonb)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_out jsonb[] := '{}';
  v_job jsonb;
  v_index integer := 0;
  v_user uuid;
begin
  if p_jobs is null or jsonb_typeof(p_jobs) <> 'array' or jsonb_array_length(p_jobs) > 1000 then
    return public.ai_jobs_enqueue_many_v1(p_jobs);  -- its error
  end if;
  for v_job in select value from jsonb_array_elements(p_jobs) loop
    if jsonb_typeof(v_job) <> 'object' or jsonb_typeof(v_job -> 'user_id') <> 'string'
       or jsonb_typeof(v_job -> 'job_type') <> 'string' then
      raise exception using errcode = '22023',
        message = format('job %s: an object with user_id and job_type is required', v_index);
    end if;
    v_index := v_index + 1;
    if jsonb_typeof(v_job -> 'max_active') is distinct from 'null' and v_job ? 'max_active' then
      v_user := (v_job ->> 'user_id')::uuid;
      perform pg_advisory_xact_lock(hashtextextended('ai_jobs.enqueue:' || v_user::text, 0));
      if not v_job ? 'idempotency_key' or jsonb_typeof(v_job -> 'idempotency_key') = 'null' or not exists (
        select 1 from public.ai_jobs j where j.user_id = v_user and j.idempotency_key = v_job ->> 'idempotency_key'
      ) then
        perform public.ai_jobs_check_active_cap(v_user, (v_job ->> 'max_active')::integer);
      end if;
      v_job := v_job - 'max_active';
    end if;
    v_out := v_out || (public.ai_jobs_enqueue_many_v1(jsonb_build_array(v_job)) -> 0);
  end loop;
  return to_jsonb(v_out);
end
$$;

-- v3 (the job and its failed or cancelled descendants) with the cap on unfinished
-- jobs, checked for the job itself before its descendants are made pending.
create or replace function public.ai_jobs_retry_v4(
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
  if p_max_active is not null and v_job.status in ('failed', 'cancelled') then
    perform pg_advisory_xact_lock(hashtextextended('ai_jobs.enqueue:' || v_job.user_id::text, 0));
    perform public.ai_jobs_check_active_cap(v_job.user_id, p_max_active);
  end if;
  return query select * from public.ai_jobs_retry_v3(p_job_id, p_user_id, null, p_daily_budget_usd);
end
$$;

-- v3, except that a paused job holding a Claude Message Batch is made pending and
-- flagged (ai_jobs_request_cancel_v2), so a worker cancels the batch first.
create or replace function public.ai_jobs_request_cancel_v4(p_job_id uuid, p_user_id uuid default null)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
begin
  if v_job.status = 'paused' and v_job.checkpoints ? 'claude-batch' then
    update public.ai_jobs j set status = 'pending', wait_reason = null, pause_requested_at = null
    where j.id = p_job_id;
  end if;
  return query select * from public.ai_jobs_request_cancel_v3(p_job_id, p_user_id);
end
$$;

-- A repeated pause or resume of a schedule returns it unchanged, without a write.
create or replace function public.ai_jobs_schedule_set_paused_v1(
  p_id uuid,
  p_user_id uuid,
  p_paused boolean,
  p_next_run_at timestamptz default null
)
returns setof public.ai_job_schedules
language plpgsql volatile
set search_path = ''
as $$
declare
  v_row public.ai_job_schedules;
begin
  select * into v_row from public.ai_job_schedules s
  where s.id = p_id and s.user_id is not distinct from p_user_id
  for update;
  if not found then
    raise exception using errcode = 'AJ002', message = 'schedule not found';
  end if;
  if v_row.paused is distinct from p_paused then
    update public.ai_job_schedules s set
      paused = p_paused,
      next_run_at = case when s.paused and not p_paused and p_next_run_at is not null
                         then p_next_run_at else s.next_run_at end
    where s.id = p_id
    returning * into v_row;
  end if;
  return next v_row;
end
$$;

revoke all on function public.ai_jobs_check_active_cap(uuid, integer) from public, anon, authenticated;
grant execute on function public.ai_jobs_check_active_cap(uuid, integer) to service_role;
revoke all on function public.ai_jobs_enqueue_v4(uuid, text, jsonb, integer, timestamptz, text, uuid, jsonb,
                                                 integer, integer, text, text, integer, integer, integer,
                                                 double precision, double precision, double precision)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_enqueue_v4(uuid, text, jsonb, integer, timestamptz, text, uuid, jsonb,
                                                    integer, integer, text, text, integer, integer, integer,
                                                    double precision, double precision, double precision)
  to service_role;
revoke all on function public.ai_jobs_enqueue_many_v2(jsonb) from public, anon, authenticated;
grant execute on function public.ai_jobs_enqueue_many_v2(jsonb) to service_role;
revoke all on function public.ai_jobs_retry_v4(uuid, uuid, integer, double precision) from public, anon, authenticated;
grant execute on function public.ai_jobs_retry_v4(uuid, uuid, integer, double precision) to service_role;
revoke all on function public.ai_jobs_request_cancel_v4(uuid, uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_request_cancel_v4(uuid, uuid) to service_role;
