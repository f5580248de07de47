-- ai-jobs: when is the next job due? A worker invocation with budget left
-- waits for work due within it (a retry-after, a near-future run_at) instead
-- of exiting and leaving the job to the next cron tick.
-- Idempotent: safe to apply again.

-- Pending jobs by due time (min(run_at) without scanning the queue).
create index if not exists ai_jobs_pending_run_at_idx
  on public.ai_jobs (run_at) where status = 'pending';

-- Seconds until the earliest pending job of these types is due (<= 0: due now),
-- or null when nothing is pending. Measured on the database clock, so worker
-- clock skew does not matter.
create or replace function public.ai_jobs_next_due_v1(p_job_types text[] default null)
returns double precision
language sql stable
set search_path = ''
as $$
  select extract(epoch from (min(j.run_at) - now()))::double precision
  from public.ai_jobs j
  where j.status = 'pending'
    and (p_job_types is null or j.job_type = any (p_job_types))
$$;

revoke all on function public.ai_jobs_next_due_v1(text[]) from public, anon, authenticated;
grant execute on function public.ai_jobs_next_due_v1(text[]) to service_role;
