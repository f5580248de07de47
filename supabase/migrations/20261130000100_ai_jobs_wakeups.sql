-- ai-jobs 4: on-time wake-ups from Supabase Cron (pg_cron + pg_net, secrets in Vault).
--
-- A job whose run_at is in the future, or that went back to pending after a retryable
-- error, only starts when something asks the app to work. Vercel Cron on Hobby runs
-- once a day, so on Supabase the database wakes the app itself: pg_cron runs
-- public.ai_jobs_wake_v1() every 5 seconds (pg_cron 1.5 and later) or every minute
-- (pg_cron 1.4, which has no second-based schedules), and that function calls
-- GET <app url>/api/internal/sweep through pg_net only when work is due.
--
-- The app URL and the cron secret are read from Vault:
--   select vault.create_secret('https://your-app.vercel.app', 'ai_jobs_app_url');
--   select vault.create_secret('<the CRON_SECRET set in Vercel>', 'ai_jobs_cron_secret');
--
-- Plain PostgreSQL without pg_cron: nothing is scheduled and the status says mode 'none'.
-- Nothing here needs a superuser (on Supabase, postgres enables pg_cron and pg_net
-- through supautils and schedules through cron.schedule; it cannot write cron.job).
-- Idempotent: functions are created with "or replace", everything else is guarded.

-- Which schedule the installed pg_cron accepts. Versions compare as numbers
-- ('1.10' is newer than '1.5'); Debian's '1.4-1' counts as 1.4.
create or replace function public.ai_jobs_wake_schedule_v1(pg_cron_version text)
returns text
language sql immutable
set search_path = ''
as $$
  select case
    when coalesce(
      string_to_array(substring(pg_cron_version from '^[0-9]+(?:\.[0-9]+)*'), '.')::numeric[],
      '{}'::numeric[]
    ) >= '{1,5}'::numeric[]
      then '5 seconds'
    else '* * * * *'
  end
$$;

-- When ai_jobs_schedule_wake_v1 last (re)scheduled the job: the reference point for
-- "no run recorded for more than 3 intervals" before pg_cron has recorded any run.
create table if not exists public.ai_jobs_wakeup_schedule (
  job_name     text primary key,
  scheduled_at timestamptz not null default now()
);
comment on table public.ai_jobs_wakeup_schedule is
  'When the ai-jobs-wake pg_cron job was last scheduled. Read by ai_jobs_wakeup_status_v1 only.';
alter table public.ai_jobs_wakeup_schedule enable row level security;
revoke all on table public.ai_jobs_wakeup_schedule from public, anon, authenticated, service_role;

-- What stops a wake-up from reaching the app, or null when nothing does: pg_net
-- missing, Vault missing, a secret missing or empty, an app URL that is not http(s).
-- The message says exactly what to run. Secret values never appear in it.
create or replace function public.ai_jobs_wake_setup_problem()
returns text
language plpgsql stable
set search_path = ''
as $$
declare
  v_vault oid;
  v_url text;
  v_secret text;
  v_url_found boolean;
  v_secret_found boolean;
begin
  if not exists (
    select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'net' and p.proname = 'http_get'
  ) then
    return 'pg_net is not enabled (net.http_get is missing): run create extension if not exists pg_net '
           'with schema extensions; (or enable pg_net under Database > Extensions)';
  end if;
  select c.oid into v_vault
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  where n.nspname = 'vault' and c.relname = 'decrypted_secrets';
  if v_vault is null then
    return 'Vault is not available (vault.decrypted_secrets is missing): enable the supabase_vault extension, '
           'then store ai_jobs_app_url and ai_jobs_cron_secret with vault.create_secret';
  end if;
  if not has_table_privilege(v_vault, 'select') then
    return format('%s may not read vault.decrypted_secrets: grant select on vault.decrypted_secrets to %s',
                  current_user, current_user);
  end if;
  select true, s.decrypted_secret into v_url_found, v_url
  from vault.decrypted_secrets s where s.name = 'ai_jobs_app_url';
  select true, s.decrypted_secret into v_secret_found, v_secret
  from vault.decrypted_secrets s where s.name = 'ai_jobs_cron_secret';
  if v_url_found is null then
    return 'Vault secret ai_jobs_app_url is missing: run '
           'select vault.create_secret(''https://your-app.vercel.app'', ''ai_jobs_app_url'');';
  end if;
  if coalesce(btrim(v_url), '') = '' then
    return 'Vault secret ai_jobs_app_url is empty: run select vault.update_secret((select id from vault.secrets '
           'where name = ''ai_jobs_app_url''), ''https://your-app.vercel.app'');';
  end if;
  if btrim(v_url) !~* '^https?://[^/\s]+' then
    return 'Vault secret ai_jobs_app_url must be the app''s base URL, like https://your-app.vercel.app';
  end if;
  if v_secret_found is null then
    return 'Vault secret ai_jobs_cron_secret is missing: run '
           'select vault.create_secret(''<the CRON_SECRET set in Vercel>'', ''ai_jobs_cron_secret'');';
  end if;
  if coalesce(btrim(v_secret), '') = '' then
    return 'Vault secret ai_jobs_cron_secret is empty: run select vault.update_secret((select id from vault.secrets '
           'where name = ''ai_jobs_cron_secret''), ''<the CRON_SECRET set in Vercel>'');';
  end if;
  return null;
end
$$;

-- What pg_cron runs. Idle queue: one indexed query, no HTTP call. Work due (a pending
-- job whose run_at has passed, or a running job whose lease expired): one GET to the
-- sweep endpoint with the cron secret. Anything missing raises, so pg_cron records the
-- run as failed with this message in cron.job_run_details (and health reports it).
create or replace function public.ai_jobs_wake_v1()
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

-- (Re)schedule the ai-jobs-wake job as the calling role (run it as postgres, e.g. in the
-- SQL editor, after enabling pg_cron later). p_schedule: a pg_cron schedule ('30 seconds',
-- '*/2 * * * *'); null picks the one the installed pg_cron accepts. p_enabled => false
-- pauses the job (health then reports mode 'none' without a problem).
create or replace function public.ai_jobs_schedule_wake_v1(p_schedule text default null, p_enabled boolean default true)
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
  v_jobid := cron.schedule('ai-jobs-wake', v_schedule, 'select public.ai_jobs_wake_v1()');
  select j.active into v_active from cron.job j where j.jobid = v_jobid;
  if v_active is distinct from coalesce(p_enabled, true) then
    -- cron.schedule keeps a paused job paused
    perform cron.alter_job(job_id := v_jobid, active := coalesce(p_enabled, true));
  end if;
  insert into public.ai_jobs_wakeup_schedule as w (job_name, scheduled_at) values ('ai-jobs-wake', now())
  on conflict (job_name) do update set scheduled_at = excluded.scheduled_at;
  return v_schedule;
end
$$;

-- The wake-up, as health reports it. SECURITY DEFINER (owned by the migration role, who
-- owns the cron job) because service_role may not read cron's tables or Vault.
--   mode      'pg_cron' while the ai-jobs-wake job is scheduled and active, else 'none'
--   schedule  the job's schedule (also while paused), or null
--   last_run  the last finished run {status, message, start_time, end_time}, or null
--   problem   why wake-ups are not working, or null; checked in this order: pg_cron missing
--             on Supabase, job not scheduled, the last run failed, pg_net / Vault / a secret
--             missing, no run recorded for more than 3 schedule intervals
create or replace function public.ai_jobs_wakeup_status_v1()
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
declare
  v_supabase boolean := exists (select 1 from pg_catalog.pg_roles r where r.rolname = 'supabase_admin');
  v_version text;
  v_jobid bigint;
  v_schedule text;
  v_active boolean;
  v_mode text := 'none';
  v_problem text;
  v_last record;
  v_last_run jsonb;
  v_last_start timestamptz;
  v_since timestamptz;
  v_fields text[];
  v_seconds integer;
  v_readable boolean;
begin
  select e.extversion into v_version from pg_catalog.pg_extension e where e.extname = 'pg_cron';
  if v_version is null then
    if v_supabase then
      v_problem := 'Supabase Cron is not enabled (pg_cron is not installed): enable pg_cron and pg_net under '
                   'Database > Extensions, then run select public.ai_jobs_schedule_wake_v1();';
    end if;
    return jsonb_build_object('mode', 'none', 'schedule', null, 'last_run', null, 'problem', v_problem);
  end if;
  -- (nested: naming cron.job needs usage on schema cron)
  if has_schema_privilege('cron', 'usage') then
    v_readable := has_table_privilege('cron.job', 'select');
  end if;
  if not coalesce(v_readable, false) then
    return jsonb_build_object('mode', 'none', 'schedule', null, 'last_run', null, 'problem',
      format('%s may not read cron.job: grant usage on schema cron and select on cron.job to it', current_user));
  end if;

  select j.jobid, j.schedule, j.active into v_jobid, v_schedule, v_active
  from cron.job j
  where j.jobname = 'ai-jobs-wake' and j.username = current_user and j.database = current_database()
  order by j.jobid limit 1;
  if v_jobid is null then
    return jsonb_build_object('mode', 'none', 'schedule', null, 'last_run', null, 'problem',
      'pg_cron is enabled but the ai-jobs-wake job is not scheduled: run select public.ai_jobs_schedule_wake_v1();');
  end if;
  if v_active then
    v_mode := 'pg_cron';
  end if;

  if has_table_privilege('cron.job_run_details', 'select') then
    -- newest first by runid (the primary key), so this stays cheap however long the history is
    select d.status, d.return_message, d.start_time, d.end_time into v_last
    from cron.job_run_details d
    where d.jobid = v_jobid and d.status in ('succeeded', 'failed')
    order by d.runid desc limit 1;
    if found then
      v_last_run := jsonb_build_object(
        'status', v_last.status,
        -- pg_cron stores libpq's message: "ERROR:  <message>\nHINT: ...\nCONTEXT: ..."
        'message', nullif(btrim(regexp_replace(split_part(coalesce(v_last.return_message, ''), E'\n', 1),
                                               '^(ERROR|FATAL):\s+', '')), ''),
        'start_time', v_last.start_time,
        'end_time', v_last.end_time);
    end if;
    select d.start_time into v_last_start
    from cron.job_run_details d where d.jobid = v_jobid order by d.runid desc limit 1;
  end if;

  if v_active then
    if v_last_run ->> 'status' = 'failed' then
      v_problem := 'the last wake-up failed: ' || coalesce(v_last_run ->> 'message', 'no message');
    end if;
    v_problem := coalesce(v_problem, public.ai_jobs_wake_setup_problem());
    if v_problem is null then
      v_fields := regexp_split_to_array(btrim(v_schedule), '\s+');
      v_seconds := case
        when v_schedule ~* '^\s*[0-9]+\s+seconds?\s*$' then substring(v_schedule from '[0-9]+')::integer
        when array_length(v_fields, 1) <> 5 then 86400
        when v_fields[1] = '*' then 60
        when v_fields[1] ~ '^\*/[0-9]+$' then 60 * substring(v_fields[1] from '[0-9]+')::integer
        when v_fields[2] = '*' then 3600
        else 86400
      end;
      v_since := greatest(
        v_last_start,
        (select w.scheduled_at from public.ai_jobs_wakeup_schedule w where w.job_name = 'ai-jobs-wake'));
      if v_since < now() - make_interval(secs => 3 * greatest(v_seconds, 1)) then
        v_problem := format('no wake-up run recorded since %s (schedule %s): pg_cron is not running jobs '
                            'for this database', to_char(v_since at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                            v_schedule);
      end if;
    end if;
  end if;

  return jsonb_build_object('mode', v_mode, 'schedule', v_schedule, 'last_run', v_last_run, 'problem', v_problem);
end
$$;

-- Only service_role (and the owner, who runs the cron job) may call these. Supabase's
-- default privileges would hand them to anon and authenticated, and Postgres to PUBLIC.
revoke all on function
  public.ai_jobs_wake_schedule_v1(text),
  public.ai_jobs_wake_setup_problem(),
  public.ai_jobs_wake_v1(),
  public.ai_jobs_schedule_wake_v1(text, boolean),
  public.ai_jobs_wakeup_status_v1()
from public, anon, authenticated;
grant execute on function
  public.ai_jobs_wake_schedule_v1(text),
  public.ai_jobs_wake_setup_problem(),
  public.ai_jobs_wake_v1(),
  public.ai_jobs_schedule_wake_v1(text, boolean),
  public.ai_jobs_wakeup_status_v1()
to service_role;

-- Scheduling. On Supabase, enable pg_cron and pg_net when they are available but not
-- enabled (postgres may, through supautils); if that fails, warn and carry on: health
-- reports it. Wherever pg_cron is installed, (re)schedule ai-jobs-wake, unless it was
-- paused on purpose, and drop the every-minute ai-jobs-sweep job this replaces.
do $wake$
begin
  if exists (select 1 from pg_catalog.pg_roles where rolname = 'supabase_admin') then
    if not exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron')
       and exists (select 1 from pg_catalog.pg_available_extensions where name = 'pg_cron') then
      begin
        create extension if not exists pg_cron with schema pg_catalog;
      exception when others then
        raise warning 'ai-jobs: could not enable pg_cron (%): enable it under Database > Extensions, '
                      'then run select public.ai_jobs_schedule_wake_v1();', sqlerrm;
      end;
    end if;
    if not exists (select 1 from pg_catalog.pg_extension where extname = 'pg_net')
       and exists (select 1 from pg_catalog.pg_available_extensions where name = 'pg_net') then
      begin
        create extension if not exists pg_net with schema extensions;
      exception when others then
        raise warning 'ai-jobs: could not enable pg_net (%): enable it under Database > Extensions', sqlerrm;
      end;
    end if;
  end if;

  if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron') then
    if exists (select 1 from cron.job where jobname = 'ai-jobs-sweep' and username = current_user) then
      perform cron.unschedule('ai-jobs-sweep');
    end if;
    if not exists (
      select 1 from cron.job
      where jobname = 'ai-jobs-wake' and username = current_user and not active
    ) then
      perform public.ai_jobs_schedule_wake_v1();
    end if;
  end if;
end
$wake$;
