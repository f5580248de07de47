-- ai-jobs: cancel is idempotent without side effects.
--
-- The first version already answered a repeated cancel with the job, but for a
-- running job that was already flagged it still updated the row: updated_at
-- moved and every Realtime subscriber got an event for a change that changed
-- nothing. Now a repeat is a plain read:
--   pending                      -> cancelled at once (cancel_requested_at, finished_at set)
--   running, not yet flagged     -> cancel_requested_at set; the worker stops at its next step
--   running, already flagged     -> returned unchanged
--   cancelled                    -> returned unchanged
--   completed or failed          -> AJ003 (HTTP 409)
-- Idempotent: create or replace, privileges restated.

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

revoke all on function public.ai_jobs_request_cancel_v1(uuid, uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_request_cancel_v1(uuid, uuid) to service_role;
