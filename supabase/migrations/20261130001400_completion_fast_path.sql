-- ai-jobs: a cheaper completion on the worker's fast path (issue 13).
--
-- ai_jobs_complete_many_v2 is ai_jobs_complete_many_v1 except that a result without
-- a "usage" key keeps the row's usage as it is, instead of calling
-- ai_jobs_usage_add(usage, null) for it. That call returned the usage unchanged but,
-- being a function with its own search_path, ran per row and cost about 15 % of a
-- no-op job's database time. Usage sent with a result is added as before.
-- ai_jobs_complete_claim_v2 is ai_jobs_complete_claim_v1 over complete_many_v2.
-- The v1 functions stay for workers of the previous release during a rolling deploy.
-- Idempotent: create or replace, privileges restated.

create or replace function public.ai_jobs_complete_many_v2(p_worker text, p_results jsonb)
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
    usage = case when r.value -> 'usage' is null then j.usage
                 else public.ai_jobs_usage_add(j.usage, r.value -> 'usage') end,
    locked_by = null,
    lease_expires_at = null,
    finished_at = now()
  from jsonb_array_elements(p_results) r
  where j.id = (r.value ->> 'id')::uuid and j.status = 'running' and j.locked_by = p_worker
  returning j.id;
end
$$;

revoke all on function public.ai_jobs_complete_many_v2(text, jsonb) from public, anon, authenticated;
grant execute on function public.ai_jobs_complete_many_v2(text, jsonb) to service_role;

create or replace function public.ai_jobs_complete_claim_v2(
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
    from public.ai_jobs_complete_many_v2(p_worker, p_results) c;
  end if;
  select coalesce(jsonb_agg(to_jsonb(j)), '[]'::jsonb) into v_claimed
  from public.ai_jobs_claim_v2(p_worker, p_limit, p_lease_seconds, p_job_types) j;
  return jsonb_build_object('completed', v_completed, 'claimed', v_claimed);
end
$$;

revoke all on function public.ai_jobs_complete_claim_v2(text, jsonb, integer, integer, text[])
  from public, anon, authenticated;
grant execute on function public.ai_jobs_complete_claim_v2(text, jsonb, integer, integer, text[]) to service_role;
