-- The retention purge keeps a child job while its parent is unfinished.
--
-- Before: a child was deleted 30 days (completed) or 7 days (failed, cancelled) after
-- it finished, whatever its parent was doing. A workflow that spawns children, waits
-- for them and then sleeps for longer (its handler runs again from the top every day)
-- then found no child under its spawn key and created and ran a new one: paid work
-- done twice, and a purged failed child no longer counted against max_failures.
-- Now a finished job whose parent is pending, running or paused is kept until the
-- parent finishes; then the usual retention applies. Same signature and result:
-- callers, and pg_cron jobs that call it, are unchanged.

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
    where ((j.status = 'completed' and j.finished_at < now() - p_completed_retention)
           or (j.status in ('failed', 'cancelled') and j.finished_at < now() - p_failed_retention))
      and not exists (
        select 1 from public.ai_jobs p
        where p.id = j.parent_id and p.status in ('pending', 'running', 'paused')
      )
    limit greatest(coalesce(p_limit, 1000), 1)
    for update skip locked
  )
  delete from public.ai_jobs j using doomed d where j.id = d.id;
  get diagnostics v_deleted = row_count;
  return v_deleted;
end
$$;
