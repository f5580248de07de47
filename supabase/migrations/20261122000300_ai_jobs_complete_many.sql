-- ai-jobs 3: complete several jobs in one statement (one commit), for workers
-- that claim in batches. Jobs this worker no longer holds are skipped, not
-- raised: the returned ids are the ones actually completed.
-- p_results: [{"id": uuid, "result": any, "usage": object|null}, ...]

create or replace function public.ai_jobs_complete_many_v1(p_worker text, p_results jsonb)
returns table (id uuid)
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_results is null or jsonb_typeof(p_results) <> 'array' then
    raise exception using errcode = '22023', message = 'results must be a JSON array of {id, result, usage}';
  end if;
  if exists (
    select 1 from jsonb_array_elements(p_results) r
    where jsonb_typeof(r.value) <> 'object' or jsonb_typeof(r.value -> 'id') <> 'string'
  ) then
    raise exception using errcode = '22023', message = 'every result needs an id';
  end if;
  return query
  update public.ai_jobs j set
    status = 'completed',
    result = coalesce(r.value -> 'result', 'null'::jsonb),
    error = null,
    progress = 100,
    usage = public.ai_jobs_usage_add(j.usage, r.value -> 'usage'),
    locked_by = null,
    lease_expires_at = null,
    finished_at = now()
  from jsonb_array_elements(p_results) r
  where j.id = (r.value ->> 'id')::uuid and j.status = 'running' and j.locked_by = p_worker
  returning j.id;
end
$$;

revoke all on function public.ai_jobs_complete_many_v1(text, jsonb) from public, anon, authenticated;
grant execute on function public.ai_jobs_complete_many_v1(text, jsonb) to service_role;
