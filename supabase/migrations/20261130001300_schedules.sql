-- ai-jobs: schedules (recurring jobs from a cron expression and a time zone).
--
-- A schedule belongs to a user (created through the API; the owner reads it over RLS)
-- or to the deployment (declared in code, user_id null, its jobs run as run_as).
-- Python computes cron ticks (DST-correct, in the schedule's time zone); SQL fires
-- a tick with a compare-and-set on next_run_at and enqueues the job in the same
-- transaction, with an idempotency key made of the schedule id and the tick, so a
-- tick fires at most once however many workers and sweeps race for it.
-- Due schedules wake the app through pg_cron like due jobs (ai_jobs_wake_v2).
-- Idempotent: safe to apply again.

create table if not exists public.ai_job_schedules (
  id            uuid primary key default gen_random_uuid(),
  user_id       uuid references auth.users (id) on delete cascade,
  run_as        uuid references auth.users (id) on delete cascade,
  name          text not null,
  job_type      text not null,
  input         jsonb not null default '{}'::jsonb,
  cron          text not null,
  timezone      text not null default 'UTC',
  next_run_at   timestamptz not null,
  paused        boolean not null default false,
  last_tick_at  timestamptz,
  last_fired_at timestamptz,
  last_job_id   uuid,
  last_error    jsonb,
  created_at    timestamptz not null default now(),
  updated_at    timestamptz not null default now()
);

do $constraints$
begin
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'ai_job_schedules_owner_xor_run_as') then
    alter table public.ai_job_schedules add constraint ai_job_schedules_owner_xor_run_as
      check ((user_id is null) <> (run_as is null));
  end if;
  if not exists (select 1 from pg_catalog.pg_constraint where conname = 'ai_job_schedules_shape') then
    alter table public.ai_job_schedules add constraint ai_job_schedules_shape check (
      length(name) between 1 and 200
      and job_type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$' and length(job_type) <= 100
      and jsonb_typeof(input) = 'object'
      and length(cron) between 1 and 200
      and length(timezone) between 1 and 64
      and (last_error is null or jsonb_typeof(last_error) = 'object'));
  end if;
end
$constraints$;

comment on table public.ai_job_schedules is
  'Recurring jobs. Owners read their rows (RLS); writes go through the ai_jobs_schedule_*_v1 functions (service_role).';
comment on column public.ai_job_schedules.run_as is
  'Deployment schedules (user_id null): the user whose jobs they create.';

-- Due schedules (the sweep, the wake-up and next_due read min(next_run_at)).
create index if not exists ai_job_schedules_due_idx
  on public.ai_job_schedules (next_run_at) where not paused;
create index if not exists ai_job_schedules_user_idx
  on public.ai_job_schedules (user_id, created_at desc, id desc);
create index if not exists ai_job_schedules_run_as_idx on public.ai_job_schedules (run_as);
-- Deployment schedules are upserted by name.
create unique index if not exists ai_job_schedules_deployment_name_idx
  on public.ai_job_schedules (name) where user_id is null;

drop trigger if exists ai_job_schedules_touch_updated_at on public.ai_job_schedules;
create trigger ai_job_schedules_touch_updated_at before update on public.ai_job_schedules
  for each row execute function public.ai_jobs_touch_updated_at();

alter table public.ai_job_schedules enable row level security;
drop policy if exists ai_job_schedules_owner_select on public.ai_job_schedules;
create policy ai_job_schedules_owner_select on public.ai_job_schedules
  for select to authenticated
  using (user_id = (select auth.uid()));

revoke all on table public.ai_job_schedules from public, anon, authenticated;
grant select on table public.ai_job_schedules to authenticated;
grant all on table public.ai_job_schedules to service_role;

-- Create a user's schedule; at most p_max_schedules per user (AJ001, checked under a
-- per-user lock so concurrent creates cannot pass the cap together).
create or replace function public.ai_jobs_schedule_create_v1(
  p_user_id uuid,
  p_name text,
  p_job_type text,
  p_input jsonb,
  p_cron text,
  p_timezone text,
  p_next_run_at timestamptz,
  p_paused boolean default false,
  p_max_schedules integer default null
)
returns setof public.ai_job_schedules
language plpgsql volatile
set search_path = ''
as $$
declare
  v_count integer;
begin
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'user_id is required';
  end if;
  if p_max_schedules is not null then
    perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('ai_job_schedules:' || p_user_id::text, 0));
    select count(*) into v_count from public.ai_job_schedules s where s.user_id = p_user_id;
    if v_count >= p_max_schedules then
      raise exception using errcode = 'AJ001',
        message = format('schedule limit reached: %s of %s schedules', v_count, p_max_schedules),
        hint = 'delete a schedule first';
    end if;
  end if;
  return query
    insert into public.ai_job_schedules (user_id, name, job_type, input, cron, timezone, next_run_at, paused)
    values (p_user_id, p_name, p_job_type, coalesce(p_input, '{}'::jsonb), p_cron, coalesce(p_timezone, 'UTC'),
            p_next_run_at, coalesce(p_paused, false))
    returning *;
end
$$;

-- Declare a deployment schedule (idempotent, keyed by name). A changed cron or time
-- zone takes p_next_run_at; otherwise the stored next tick (and paused) are kept.
create or replace function public.ai_jobs_schedule_upsert_v1(
  p_name text,
  p_run_as uuid,
  p_job_type text,
  p_input jsonb,
  p_cron text,
  p_timezone text,
  p_next_run_at timestamptz
)
returns setof public.ai_job_schedules
language sql volatile
set search_path = ''
as $$
  insert into public.ai_job_schedules as s (user_id, run_as, name, job_type, input, cron, timezone, next_run_at)
  values (null, p_run_as, p_name, p_job_type, coalesce(p_input, '{}'::jsonb), p_cron, coalesce(p_timezone, 'UTC'),
          p_next_run_at)
  on conflict (name) where user_id is null do update set
    run_as = excluded.run_as,
    job_type = excluded.job_type,
    input = excluded.input,
    cron = excluded.cron,
    timezone = excluded.timezone,
    next_run_at = case when (s.cron, s.timezone) is distinct from (excluded.cron, excluded.timezone)
                       then excluded.next_run_at else s.next_run_at end
  where (s.run_as, s.job_type, s.input, s.cron, s.timezone)
        is distinct from (excluded.run_as, excluded.job_type, excluded.input, excluded.cron, excluded.timezone)
  returning *
$$;

-- A user's schedules, newest first (keyset); p_user_id null: deployment schedules.
create or replace function public.ai_jobs_schedule_list_v1(
  p_user_id uuid default null,
  p_limit integer default 20,
  p_before_created_at timestamptz default null,
  p_before_id uuid default null
)
returns setof public.ai_job_schedules
language sql stable
set search_path = ''
as $$
  select s.* from public.ai_job_schedules s
  where s.user_id is not distinct from p_user_id
    and (p_before_created_at is null or (s.created_at, s.id) < (p_before_created_at, p_before_id))
  order by s.created_at desc, s.id desc
  limit least(greatest(coalesce(p_limit, 20), 1), 100)
$$;

-- Pause (p_paused) or resume a user's schedule; resuming takes p_next_run_at (the next
-- tick after now), so ticks missed while paused do not fire. Someone else's: AJ002.
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
  update public.ai_job_schedules s set
    paused = p_paused,
    next_run_at = case when s.paused and not p_paused and p_next_run_at is not null
                       then p_next_run_at else s.next_run_at end
  where s.id = p_id and s.user_id is not distinct from p_user_id
  returning * into v_row;
  if not found then
    raise exception using errcode = 'AJ002', message = 'schedule not found';
  end if;
  return next v_row;
end
$$;

create or replace function public.ai_jobs_schedule_get_v1(p_id uuid, p_user_id uuid)
returns setof public.ai_job_schedules
language plpgsql stable
set search_path = ''
as $$
declare
  v_row public.ai_job_schedules;
begin
  select * into v_row from public.ai_job_schedules s where s.id = p_id and s.user_id is not distinct from p_user_id;
  if not found then
    raise exception using errcode = 'AJ002', message = 'schedule not found';
  end if;
  return next v_row;
end
$$;

create or replace function public.ai_jobs_schedule_delete_v1(p_id uuid, p_user_id uuid)
returns setof public.ai_job_schedules
language plpgsql volatile
set search_path = ''
as $$
declare
  v_row public.ai_job_schedules;
begin
  delete from public.ai_job_schedules s
  where s.id = p_id and s.user_id is not distinct from p_user_id
  returning * into v_row;
  if not found then
    raise exception using errcode = 'AJ002', message = 'schedule not found';
  end if;
  return next v_row;
end
$$;

-- Active schedules whose tick has come, with the database clock (db_now) to compute
-- the next tick from. Nothing is locked: the fire below is a compare-and-set.
create or replace function public.ai_jobs_schedule_due_v1(p_limit integer default 100)
returns table (schedule jsonb, db_now timestamptz)
language sql stable
set search_path = ''
as $$
  select to_jsonb(s), now()
  from public.ai_job_schedules s
  where not s.paused and s.next_run_at <= now()
  order by s.next_run_at
  limit least(greatest(coalesce(p_limit, 100), 1), 1000)
$$;

-- Fire one tick: move next_run_at from p_expected_next to p_new_next only if nobody
-- did it first, and in the same transaction enqueue the job (p_job: enqueue fields
-- such as priority, max_attempts, limits and cost figures; owner, type, input and
-- idempotency key come from the schedule). A refused enqueue (active-job cap, budget,
-- bad input) skips the tick and is kept in last_error; so does p_skip_error (the job
-- could not be built: its type is gone, its input no longer valid). Returns {fired, job_id,
-- created, error}; fired false: another caller fired this tick, or the schedule is
-- paused or gone.
create or replace function public.ai_jobs_fire_schedule_v1(
  p_id uuid,
  p_expected_next timestamptz,
  p_new_next timestamptz,
  p_job jsonb default '{}'::jsonb,
  p_skip_error jsonb default null
)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_s public.ai_job_schedules;
  v_job jsonb;
  v_result jsonb;
  v_state text;
  v_message text;
begin
  if p_new_next is null or p_expected_next is null or p_new_next <= p_expected_next then
    raise exception using errcode = '22023', message = 'the new tick must be after the expected one';
  end if;
  if p_job is not null and jsonb_typeof(p_job) <> 'object' then
    raise exception using errcode = '22023', message = 'job must be a JSON object';
  end if;
  update public.ai_job_schedules s set next_run_at = p_new_next, last_tick_at = p_expected_next
  where s.id = p_id and s.next_run_at = p_expected_next and not s.paused
  returning * into v_s;
  if not found then
    return jsonb_build_object('fired', false);
  end if;
  if p_skip_error is not null then
    update public.ai_job_schedules s set last_error = jsonb_build_object(
      'code', p_skip_error ->> 'code', 'message', left(p_skip_error ->> 'message', 1000),
      'tick', p_expected_next, 'at', now())
    where s.id = p_id;
    return jsonb_build_object('fired', true, 'job_id', null, 'created', false, 'error', p_skip_error);
  end if;
  v_job := coalesce(p_job, '{}'::jsonb) || jsonb_build_object(
    'user_id', coalesce(v_s.user_id, v_s.run_as),
    'job_type', v_s.job_type,
    'input', v_s.input,
    'idempotency_key', format('schedule:%s:%s', v_s.id, extract(epoch from p_expected_next)::bigint),
    'metadata', coalesce(p_job -> 'metadata', '{}'::jsonb) || jsonb_build_object(
      'schedule_id', v_s.id, 'scheduled_for', p_expected_next));
  begin
    v_result := public.ai_jobs_enqueue_many_v1(jsonb_build_array(v_job)) -> 0;
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
    update public.ai_job_schedules s set last_error = jsonb_build_object(
      'code', v_state, 'message', left(v_message, 1000), 'tick', p_expected_next, 'at', now())
    where s.id = p_id;
    return jsonb_build_object('fired', true, 'job_id', null, 'created', false,
                              'error', jsonb_build_object('code', v_state, 'message', left(v_message, 1000)));
  end;
  update public.ai_job_schedules s set
    last_fired_at = now(), last_job_id = (v_result -> 'job' ->> 'id')::uuid, last_error = null
  where s.id = p_id;
  return jsonb_build_object('fired', true, 'job_id', v_result -> 'job' -> 'id',
                            'created', coalesce((v_result ->> 'created')::boolean, false), 'error', null);
end
$$;

-- v2: v1 plus the next tick of active schedules (of these job types). The runner's wait
-- and the wake-up see a schedule due like a job due.
create or replace function public.ai_jobs_next_due_v2(p_job_types text[] default null)
returns double precision
language sql stable
set search_path = ''
as $$
  select extract(epoch from (least(
    (select min(j.run_at) from public.ai_jobs j
     where j.status = 'pending' and (p_job_types is null or j.job_type = any (p_job_types))),
    (select min(s.next_run_at) from public.ai_job_schedules s
     where not s.paused and (p_job_types is null or s.job_type = any (p_job_types)))
  ) - now()))::double precision
$$;

-- v2: v1 plus due schedules (an active schedule whose next_run_at has passed).
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
  if not exists (select 1 from public.ai_jobs j where j.status = 'pending' and j.run_at <= now())
     and not exists (select 1 from public.ai_jobs j where j.status = 'running' and j.lease_expires_at <= now())
     and not exists (select 1 from public.ai_job_schedules s where not s.paused and s.next_run_at <= now())
  then
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

-- v2: schedules the ai-jobs-wake job with ai_jobs_wake_v2.
create or replace function public.ai_jobs_schedule_wake_v2(p_schedule text default null, p_enabled boolean default true)
returns text
language plpgsql volatile
set search_path = ''
as $$
declare
  v_version text;
  v_schedule text;
  v_jobid bigint;
  v_active boolean;
begin
  select e.extversion into v_version from pg_catalog.pg_extension e where e.extname = 'pg_cron';
  if v_version is null then
    raise exception using errcode = '55000',
      message = 'pg_cron is not installed: run create extension if not exists pg_cron with schema pg_catalog; '
                '(or enable pg_cron under Database > Extensions) and then this function again';
  end if;
  v_schedule := coalesce(nullif(btrim(p_schedule), ''), public.ai_jobs_wake_schedule_v1(v_version));
  v_jobid := cron.schedule('ai-jobs-wake', v_schedule, 'select public.ai_jobs_wake_v2()');
  select j.active into v_active from cron.job j where j.jobid = v_jobid;
  if v_active is distinct from coalesce(p_enabled, true) then
    perform cron.alter_job(job_id := v_jobid, active := coalesce(p_enabled, true));
  end if;
  insert into public.ai_jobs_wakeup_schedule as w (job_name, scheduled_at) values ('ai-jobs-wake', now())
  on conflict (job_name) do update set scheduled_at = excluded.scheduled_at;
  return v_schedule;
end
$$;

-- v2: v1, with v2 in the fixes it names, plus a problem when the ai-jobs-wake job still
-- runs ai_jobs_wake_v1 (it would start due jobs but never a due schedule).
create or replace function public.ai_jobs_wakeup_status_v2()
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
declare
  v_status jsonb := public.ai_jobs_wakeup_status_v1();
  v_command text;
begin
  if v_status ->> 'problem' is not null then
    return jsonb_set(v_status, '{problem}', to_jsonb(
      replace(v_status ->> 'problem', 'ai_jobs_schedule_wake_v1()', 'ai_jobs_schedule_wake_v2()')));
  end if;
  if v_status ->> 'mode' = 'pg_cron' then  -- pg_cron is installed and cron.job readable
    select j.command into v_command from cron.job j
    where j.jobname = 'ai-jobs-wake' and j.username = current_user and j.database = current_database()
    order by j.jobid limit 1;
    if v_command is distinct from 'select public.ai_jobs_wake_v2()' then
      return jsonb_set(v_status, '{problem}', to_jsonb(format(
        'the ai-jobs-wake job runs %s, which does not start schedules: run select public.ai_jobs_schedule_wake_v2();',
        coalesce(v_command, 'nothing'))));
    end if;
  end if;
  return v_status;
end
$$;

revoke all on function
  public.ai_jobs_schedule_create_v1(uuid, text, text, jsonb, text, text, timestamptz, boolean, integer),
  public.ai_jobs_schedule_upsert_v1(text, uuid, text, jsonb, text, text, timestamptz),
  public.ai_jobs_schedule_list_v1(uuid, integer, timestamptz, uuid),
  public.ai_jobs_schedule_set_paused_v1(uuid, uuid, boolean, timestamptz),
  public.ai_jobs_schedule_delete_v1(uuid, uuid),
  public.ai_jobs_schedule_get_v1(uuid, uuid),
  public.ai_jobs_schedule_due_v1(integer),
  public.ai_jobs_fire_schedule_v1(uuid, timestamptz, timestamptz, jsonb, jsonb),
  public.ai_jobs_next_due_v2(text[]),
  public.ai_jobs_wake_v2(),
  public.ai_jobs_schedule_wake_v2(text, boolean),
  public.ai_jobs_wakeup_status_v2()
from public, anon, authenticated;
grant execute on function
  public.ai_jobs_schedule_create_v1(uuid, text, text, jsonb, text, text, timestamptz, boolean, integer),
  public.ai_jobs_schedule_upsert_v1(text, uuid, text, jsonb, text, text, timestamptz),
  public.ai_jobs_schedule_list_v1(uuid, integer, timestamptz, uuid),
  public.ai_jobs_schedule_set_paused_v1(uuid, uuid, boolean, timestamptz),
  public.ai_jobs_schedule_delete_v1(uuid, uuid),
  public.ai_jobs_schedule_get_v1(uuid, uuid),
  public.ai_jobs_schedule_due_v1(integer),
  public.ai_jobs_fire_schedule_v1(uuid, timestamptz, timestamptz, jsonb, jsonb),
  public.ai_jobs_next_due_v2(text[]),
  public.ai_jobs_wake_v2(),
  public.ai_jobs_schedule_wake_v2(text, boolean),
  public.ai_jobs_wakeup_status_v2()
to service_role;

-- Point an existing ai-jobs-wake job at ai_jobs_wake_v2 (schedule and active flag kept).
do $wake$
declare
  v_jobid bigint;
begin
  if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron')
     and has_schema_privilege('cron', 'usage') and has_table_privilege('cron.job', 'select') then
    select j.jobid into v_jobid from cron.job j
    where j.jobname = 'ai-jobs-wake' and j.username = current_user and j.database = current_database()
      and j.command <> 'select public.ai_jobs_wake_v2()'
    order by j.jobid limit 1;
    if v_jobid is not null then
      perform cron.alter_job(job_id := v_jobid, command := 'select public.ai_jobs_wake_v2()');
    end if;
  end if;
end
$wake$;
