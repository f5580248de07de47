-- Wake-ups and re-dispatches only for work a claim can take.
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
--   * ai_jobs_wake_v2 is redefined (same signature and results, 'idle' / 'woken'; only
--     pg_cron calls it, so the ai-jobs-wake job and its status stay as they are) to
--     call the sweep only when ai_jobs_work_due_v1() is true.
--   * ai_jobs_stale_pending_v2: v1 limited to the caller's job types (the types the
--     deployment registers) and to jobs whose concurrency limits are not full.
--     ai_jobs_stale_pending_v1 stays for sweeps of the previous release.
--   * ai_jobs_fail_unregistered_v1: pending jobs due for longer than the stale age
--     whose type is not among the caller's job types are finished with the error
--     {code: unknown_job_type, retryable: false} (cancelled instead when a cancel was
--     requested), so they stop counting as due work.
-- Idempotent: functions are created with "or replace", privileges restated.

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

-- What pg_cron runs: v2 as before (idle: no HTTP call; work: one GET to the sweep),
-- with work decided by ai_jobs_work_due_v1.
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

revoke all on function
  public.ai_jobs_running_by_scope(),
  public.ai_jobs_work_due_v1(),
  public.ai_jobs_wake_v2(),
  public.ai_jobs_stale_pending_v2(integer, integer, text[]),
  public.ai_jobs_fail_unregistered_v1(text[], integer, integer)
from public, anon, authenticated;
grant execute on function
  public.ai_jobs_running_by_scope(),
  public.ai_jobs_work_due_v1(),
  public.ai_jobs_wake_v2(),
  public.ai_jobs_stale_pending_v2(integer, integer, text[]),
  public.ai_jobs_fail_unregistered_v1(text[], integer, integer)
to service_role;
