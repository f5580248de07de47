-- ai-jobs: Claude spend control, a per-job cap and a per-user rolling 24 h budget.
--
-- 1. Columns. cost_estimate_usd (the create-time estimate of the job's Claude calls)
--    and cost_cap_usd (the most its recorded usage->>'cost_usd' may reach: the worker
--    starts no call whose worst case would pass it). Both null for job types that
--    make no Claude calls. Readable by the owner (column grant to authenticated).
-- 2. A spend ledger, public.ai_jobs_spend: every increase of a job's recorded cost
--    (usage->>'cost_usd', whichever function wrote it) is appended by a row trigger
--    with the time it was recorded. It outlives the job: deleting a finished job does
--    not give its spend back. Only service_role reads it (RLS on, no policy).
-- 3. ai_jobs_enqueue_v3: ai_jobs_enqueue_v2 (20261130000400_ai_jobs_fair_claim.sql)
--    with every check kept, plus the estimate and cap stored on the row and, with
--    p_daily_budget_usd, the budget check, under the same per-user advisory lock as
--    the active-job cap (so concurrent creates cannot overshoot): the user's spend
--    recorded in the last 24 h, plus what their pending and running jobs may still
--    spend (each one's cap minus its recorded cost), plus the new job's cap, must not
--    pass the budget. Refused with SQLSTATE AJ006; DETAIL is JSON with budget_usd,
--    spent_usd, reserved_usd, job_cap_usd and retry_after_seconds (when enough of the
--    recorded spend leaves the window; null when the active jobs' reservations alone
--    are in the way). An idempotent repeat returns the earlier job before any check.
--    The user's ledger rows older than 24 h are deleted there too.
-- 4. ai_jobs_retry_v2: ai_jobs_retry_v1 plus the same budget check for the retried
--    job's remaining cap (a failed or cancelled job reserves nothing until retried).
-- Idempotent: guarded DDL, create or replace, privileges restated. The v2 enqueue and
-- v1 retry stay for workers and servers of the previous release during a deploy.

-- Columns ---------------------------------------------------------------------------

alter table public.ai_jobs
  add column if not exists cost_estimate_usd numeric(12, 6),
  add column if not exists cost_cap_usd numeric(12, 6);

comment on column public.ai_jobs.cost_estimate_usd is
  'Claude cost estimated at create (input at 3 bytes per token, every call using all of max_tokens); null: no Claude calls declared.';
comment on column public.ai_jobs.cost_cap_usd is
  'The job starts no Claude call that could take usage->>''cost_usd'' over this; reserved against the owner''s daily budget while active.';

do $constraints$
begin
  if not exists (
    select 1 from pg_constraint
    where conrelid = 'public.ai_jobs'::regclass and conname = 'ai_jobs_cost_range'
  ) then
    alter table public.ai_jobs add constraint ai_jobs_cost_range
      check (cost_estimate_usd between 0 and 100000 and cost_cap_usd between 0 and 100000) not valid;
  end if;
  if exists (
    select 1 from pg_constraint
    where conrelid = 'public.ai_jobs'::regclass and conname = 'ai_jobs_cost_range' and not convalidated
  ) then
    alter table public.ai_jobs validate constraint ai_jobs_cost_range;
  end if;
end
$constraints$;

-- Browsers read the new columns of their own rows (the fair-claim migration grants
-- column by column, so a new column is hidden until granted).
grant select (cost_estimate_usd, cost_cap_usd) on table public.ai_jobs to authenticated;

-- Spend ledger ------------------------------------------------------------------------

create table if not exists public.ai_jobs_spend (
  id        bigint generated always as identity primary key,
  user_id   uuid not null references auth.users (id) on delete cascade,
  job_id    uuid not null,  -- no foreign key: the spend stays when the job is deleted
  at        timestamptz not null default now(),
  cost_usd  numeric not null,
  constraint ai_jobs_spend_positive check (cost_usd > 0)
);

comment on table public.ai_jobs_spend is
  'Claude cost recorded on ai_jobs rows, one row per increase, for the per-user rolling 24 h budget. Written by a trigger on ai_jobs; rows older than 24 h are deleted at the user''s next create.';

create index if not exists ai_jobs_spend_user_at_idx on public.ai_jobs_spend (user_id, at);

alter table public.ai_jobs_spend enable row level security;
revoke all on table public.ai_jobs_spend from public, anon, authenticated;
grant select, insert, delete on table public.ai_jobs_spend to service_role;

-- The cost recorded in a usage object (0 when absent or not a number).
create or replace function public.ai_jobs_usage_cost(p_usage jsonb)
returns numeric
language sql immutable
set search_path = ''
as $$
  select case when jsonb_typeof(p_usage -> 'cost_usd') = 'number' then (p_usage ->> 'cost_usd')::numeric else 0 end
$$;

create or replace function public.ai_jobs_record_spend()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_delta numeric := public.ai_jobs_usage_cost(new.usage) - public.ai_jobs_usage_cost(old.usage);
begin
  if v_delta > 0 then
    insert into public.ai_jobs_spend (user_id, job_id, cost_usd) values (new.user_id, new.id, v_delta);
  end if;
  return null;
end
$$;

create or replace trigger ai_jobs_record_spend
  after update of usage on public.ai_jobs
  for each row
  when ((new.usage -> 'cost_usd') is distinct from (old.usage -> 'cost_usd'))
  execute function public.ai_jobs_record_spend();

-- The budget check -------------------------------------------------------------------

-- Raise AJ006 when the user's spend in the last 24 h, plus what their active jobs may
-- still spend, plus p_reserve would pass p_budget. The caller holds the per-user
-- enqueue lock. p_exclude: a job not to count as active (the one being retried).
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
  where j.user_id = p_user_id and j.status in ('pending', 'running') and j.cost_cap_usd is not null
    and j.id is distinct from p_exclude;
  v_excess := v_spent + v_reserved + p_reserve - p_budget;
  if v_excess <= 0 then
    return;
  end if;
  -- the moment enough recorded spend has left the window (oldest first)
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
    message = format('daily Claude budget reached: $%s recorded in the last 24 h, $%s held by your active jobs '
                     'and $%s for this job would pass the $%s budget',
                     round(v_spent, 4), round(v_reserved, 4), round(p_reserve, 4), round(p_budget, 4)),
    detail = jsonb_build_object(
      'budget_usd', round(p_budget, 6), 'spent_usd', round(v_spent, 6), 'reserved_usd', round(v_reserved, 6),
      'job_cap_usd', round(p_reserve, 6), 'retry_after_seconds', v_retry)::text,
    hint = case when v_retry is null
      then 'wait for your active jobs to finish (they usually cost less than they hold), or cancel a pending one'
      else 'try again when earlier spend has left the 24-hour window, or submit a smaller job' end;
end
$$;

-- Enqueue ---------------------------------------------------------------------------

-- v2 plus: the cost estimate and cap stored on the row, and the daily budget check.
create or replace function public.ai_jobs_enqueue_v3(
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
declare
  v_job public.ai_jobs;
  v_active integer;
begin
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'user_id is required';
  end if;
  perform public.ai_jobs_check_run_at(p_run_at);
  if p_concurrency_key is not null and p_concurrency_key !~ '^[A-Za-z0-9][A-Za-z0-9._:/=@+-]{0,199}$' then
    raise exception using errcode = '22023',
      message = 'concurrency_key must be 1 to 200 characters: letters, digits and . _ : / = @ + -, starting with a letter or digit';
  end if;
  if p_org_id is not null and (length(p_org_id) not between 1 and 200 or p_org_id ~ '[[:cntrl:]]') then
    raise exception using errcode = '22023', message = 'org_id must be 1 to 200 characters without control characters';
  end if;
  if p_user_limit not between 1 and 10000 or p_org_limit not between 1 and 10000
     or p_key_limit not between 1 and 10000 then
    raise exception using errcode = '22023',
      message = format('concurrency limits must be between 1 and 10000 (or null for none), got user %s, org %s, key %s',
                       coalesce(p_user_limit::text, 'none'), coalesce(p_org_limit::text, 'none'),
                       coalesce(p_key_limit::text, 'none'));
  end if;
  if p_cost_estimate_usd not between 0 and 100000 or p_cost_cap_usd not between 0 and 100000
     or p_daily_budget_usd not between 0 and 100000 then
    raise exception using errcode = '22023',
      message = format('costs must be between 0 and 100000 US dollars, got estimate %s, cap %s, budget %s',
                       coalesce(p_cost_estimate_usd::text, 'none'), coalesce(p_cost_cap_usd::text, 'none'),
                       coalesce(p_daily_budget_usd::text, 'none'));
  end if;
  -- One enqueue per user at a time, so the cap, the budget and the idempotency check are exact.
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

  perform public.ai_jobs_check_budget(p_user_id, p_cost_cap_usd::numeric, p_daily_budget_usd::numeric);

  insert into public.ai_jobs (user_id, job_type, input, priority, run_at, idempotency_key,
                              parent_id, metadata, max_attempts, org_id, concurrency_key,
                              user_limit, org_limit, key_limit, cost_estimate_usd, cost_cap_usd)
  values (p_user_id, p_job_type, coalesce(p_input, '{}'::jsonb), coalesce(p_priority, 0),
          coalesce(p_run_at, now()), p_idempotency_key, p_parent_id,
          coalesce(p_metadata, '{}'::jsonb), coalesce(p_max_attempts, 3), p_org_id, p_concurrency_key,
          p_user_limit, p_org_limit, p_key_limit, p_cost_estimate_usd, p_cost_cap_usd)
  returning * into v_job;

  return jsonb_build_object('created', true, 'job', to_jsonb(v_job));
end
$$;

-- Retry -------------------------------------------------------------------------------

-- v1 plus: the job's remaining cap (cap minus recorded cost) is reserved against the
-- owner's daily budget.
create or replace function public.ai_jobs_retry_v2(
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
  v_job public.ai_jobs;
  v_active integer;
begin
  v_job := public.ai_jobs_locked_for_owner(p_job_id, p_user_id);
  if v_job.status not in ('failed', 'cancelled') then
    raise exception using errcode = 'AJ003',
      message = format('job %s is %s; only failed or cancelled jobs can be retried', p_job_id, v_job.status);
  end if;
  if p_max_active is not null or p_daily_budget_usd is not null then
    perform pg_advisory_xact_lock(hashtextextended('ai_jobs.enqueue:' || v_job.user_id::text, 0));
  end if;
  if p_max_active is not null then
    select count(*) into v_active from public.ai_jobs j
    where j.user_id = v_job.user_id and j.status in ('pending', 'running');
    if v_active >= p_max_active then
      raise exception using errcode = 'AJ001',
        message = format('active job limit reached: %s of %s jobs pending or running', v_active, p_max_active),
        hint = 'wait for a job to finish, or cancel one';
    end if;
  end if;
  perform public.ai_jobs_check_budget(
    v_job.user_id, greatest(v_job.cost_cap_usd - public.ai_jobs_usage_cost(v_job.usage), 0),
    p_daily_budget_usd::numeric, v_job.id);
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

-- Privileges ------------------------------------------------------------------------

revoke all on function public.ai_jobs_usage_cost(jsonb) from public, anon, authenticated;
grant execute on function public.ai_jobs_usage_cost(jsonb) to service_role;
revoke all on function public.ai_jobs_record_spend() from public, anon, authenticated;
grant execute on function public.ai_jobs_record_spend() to service_role;
revoke all on function public.ai_jobs_check_budget(uuid, numeric, numeric, uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_check_budget(uuid, numeric, numeric, uuid) to service_role;
revoke all on function public.ai_jobs_enqueue_v3(uuid, text, jsonb, integer, timestamptz, text, uuid, jsonb,
                                                 integer, integer, text, text, integer, integer, integer,
                                                 double precision, double precision, double precision)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_enqueue_v3(uuid, text, jsonb, integer, timestamptz, text, uuid, jsonb,
                                                    integer, integer, text, text, integer, integer, integer,
                                                    double precision, double precision, double precision)
  to service_role;
revoke all on function public.ai_jobs_retry_v2(uuid, uuid, integer, double precision) from public, anon, authenticated;
grant execute on function public.ai_jobs_retry_v2(uuid, uuid, integer, double precision) to service_role;
