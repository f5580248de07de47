-- ai-jobs: alerts per job type, evaluated by the sweep.
--
-- Four kinds, each per job type (a condition "fires" when its value is above the
-- threshold; thresholds come from the caller, see ai_jobs_evaluate_alerts_v1):
--   failure_rate  jobs that ended failed / jobs that ended completed or failed, over
--                 the last hour; only with at least failure_min_jobs such jobs
--   queue_depth   pending jobs that are due now
--   p95_duration  p95 run time (finished_at - started_at) of the jobs completed in the
--                 last hour > p95_factor x the p95 of the 7 days before that hour;
--                 both windows need at least p95_min_samples completed jobs
--   stuck_jobs    running jobs whose lease has expired + pending jobs due for longer
--                 than stuck_pending_seconds
-- An incident is one row of ai_jobs_alerts: opened when its condition starts firing,
-- refreshed (last_seen_at, value, details) while it keeps firing, resolved at the
-- first evaluation where it no longer fires. At most one open row per
-- (job_type, kind). Notifications are tracked per row (notified_at for the opening,
-- resolution_notified_at for the resolution) and set only after a delivery
-- succeeded, so failed deliveries are retried.
-- Idempotent: safe to apply again.

create table if not exists public.ai_jobs_alerts (
  id                     uuid primary key default gen_random_uuid(),
  job_type               text not null,
  kind                   text not null,
  opened_at              timestamptz not null default now(),
  last_seen_at           timestamptz not null default now(),
  resolved_at            timestamptz,
  value                  double precision,
  threshold              double precision,
  details                jsonb not null default '{}'::jsonb,
  notified_at            timestamptz,
  resolution_notified_at timestamptz,
  -- a sweep delivering this row's notification holds it until then (no double posts)
  notify_claimed_until   timestamptz,

  constraint ai_jobs_alerts_kind_valid
    check (kind in ('failure_rate', 'queue_depth', 'p95_duration', 'stuck_jobs')),
  constraint ai_jobs_alerts_details_object check (jsonb_typeof(details) = 'object'),
  constraint ai_jobs_alerts_resolved_after_opened check (resolved_at is null or resolved_at >= opened_at)
);

comment on table public.ai_jobs_alerts is
  'Alert incidents per (job_type, kind), written by ai_jobs_evaluate_alerts_v1 (service_role only).';

-- One open incident per job type and kind.
create unique index if not exists ai_jobs_alerts_one_open_idx
  on public.ai_jobs_alerts (job_type, kind) where resolved_at is null;
-- Recently resolved incidents (ai-jobs stats, notifications, retention).
create index if not exists ai_jobs_alerts_resolved_idx
  on public.ai_jobs_alerts (resolved_at) where resolved_at is not null;

-- Evaluation bookkeeping: one row. Locking it serializes concurrent sweeps.
create table if not exists public.ai_jobs_alert_state (
  id                   boolean primary key default true,
  last_evaluated_at    timestamptz,
  baseline_computed_at timestamptz,
  -- {job_type: {"p95_seconds": n, "samples": n}} over the 7 days before the last hour
  baselines            jsonb not null default '{}'::jsonb,
  constraint ai_jobs_alert_state_one_row check (id),
  constraint ai_jobs_alert_state_baselines_object check (jsonb_typeof(baselines) = 'object')
);

insert into public.ai_jobs_alert_state (id) values (true) on conflict (id) do nothing;

-- Nobody but the server: RLS on with no policy, Supabase's default grants revoked.
alter table public.ai_jobs_alerts enable row level security;
alter table public.ai_jobs_alert_state enable row level security;
revoke all on table public.ai_jobs_alerts, public.ai_jobs_alert_state from public, anon, authenticated;
grant select, insert, update, delete on table public.ai_jobs_alerts, public.ai_jobs_alert_state to service_role;

-- One threshold from the merged settings object, checked (22023 when out of range).
create or replace function public.ai_jobs_alert_setting(
  p_settings jsonb, p_key text, p_min numeric, p_max numeric, p_integer boolean default false
)
returns numeric
language plpgsql immutable
set search_path = ''
as $$
declare
  v_value numeric;
begin
  if jsonb_typeof(p_settings -> p_key) is distinct from 'number' then
    raise exception using errcode = '22023',
      message = format('alert threshold %s must be a number, got %s', p_key, coalesce(p_settings ->> p_key, 'null'));
  end if;
  v_value := (p_settings ->> p_key)::numeric;
  if v_value < p_min or v_value > p_max or (p_integer and v_value <> trunc(v_value)) then
    raise exception using errcode = '22023',
      message = format('alert threshold %s must be %s between %s and %s, got %s',
                       p_key, case when p_integer then 'a whole number' else 'a number' end, p_min, p_max, v_value);
  end if;
  return v_value;
end
$$;

-- Evaluate every alert condition, open / refresh / resolve incidents, and return the
-- notifications to deliver: incidents opened and not yet notified, and resolved ones
-- whose resolution was not yet notified (each within 24 h of its event; older ones
-- are given up). Returned rows are held for 60 s (notify_claimed_until) so a
-- concurrent sweep does not post them too; ai_jobs_mark_alert_notified_v1 records
-- the delivery or gives the row back. `fresh` marks the rows this call opened or
-- resolved.
--
-- p_thresholds (every key optional; unknown keys and bad values raise 22023):
--   failure_rate 0.10, failure_min_jobs 10, queue_depth 50, p95_factor 2,
--   p95_min_samples 20, stuck_jobs 5, stuck_pending_seconds 600,
--   evaluate_every_seconds 60 (conditions are evaluated at most this often; calls in
--   between only return pending notifications), baseline_refresh_seconds 3600 (how
--   long the 7-day p95 baselines are reused before being recomputed).
create or replace function public.ai_jobs_evaluate_alerts_v1(p_thresholds jsonb default '{}'::jsonb)
returns table (
  event text,
  fresh boolean,
  id uuid,
  job_type text,
  kind text,
  opened_at timestamptz,
  last_seen_at timestamptz,
  resolved_at timestamptz,
  value double precision,
  threshold double precision,
  details jsonb,
  notified_at timestamptz,
  resolution_notified_at timestamptz
)
language plpgsql volatile
set search_path = ''
as $$
#variable_conflict use_column
declare
  k_defaults constant jsonb := '{
    "failure_rate": 0.10, "failure_min_jobs": 10, "queue_depth": 50,
    "p95_factor": 2, "p95_min_samples": 20, "stuck_jobs": 5, "stuck_pending_seconds": 600,
    "evaluate_every_seconds": 60, "baseline_refresh_seconds": 3600}'::jsonb;
  v_settings jsonb;
  v_key text;
  v_failure_rate double precision;
  v_failure_min_jobs integer;
  v_queue_depth integer;
  v_p95_factor double precision;
  v_p95_min_samples integer;
  v_stuck_jobs integer;
  v_stuck_pending_seconds integer;
  v_evaluate_every_seconds integer;
  v_baseline_refresh_seconds integer;
  v_state public.ai_jobs_alert_state;
  v_opened uuid[] := '{}';
  v_resolved uuid[] := '{}';
begin
  if p_thresholds is null then
    p_thresholds := '{}'::jsonb;
  end if;
  if jsonb_typeof(p_thresholds) <> 'object' then
    raise exception using errcode = '22023', message = 'alert thresholds must be a JSON object';
  end if;
  for v_key in select jsonb_object_keys(p_thresholds) loop
    if not k_defaults ? v_key then
      raise exception using errcode = '22023', message = format('unknown alert threshold %s', v_key),
        hint = format('known: %s', (select string_agg(k, ', ' order by k) from jsonb_object_keys(k_defaults) k));
    end if;
  end loop;
  v_settings := k_defaults || p_thresholds;
  v_failure_rate := public.ai_jobs_alert_setting(v_settings, 'failure_rate', 0, 1);
  v_failure_min_jobs := public.ai_jobs_alert_setting(v_settings, 'failure_min_jobs', 1, 1000000, true);
  v_queue_depth := public.ai_jobs_alert_setting(v_settings, 'queue_depth', 0, 100000000, true);
  v_p95_factor := public.ai_jobs_alert_setting(v_settings, 'p95_factor', 1, 1000);
  v_p95_min_samples := public.ai_jobs_alert_setting(v_settings, 'p95_min_samples', 1, 1000000, true);
  v_stuck_jobs := public.ai_jobs_alert_setting(v_settings, 'stuck_jobs', 0, 100000000, true);
  v_stuck_pending_seconds := public.ai_jobs_alert_setting(v_settings, 'stuck_pending_seconds', 1, 604800, true);
  v_evaluate_every_seconds := public.ai_jobs_alert_setting(v_settings, 'evaluate_every_seconds', 0, 86400, true);
  v_baseline_refresh_seconds := public.ai_jobs_alert_setting(v_settings, 'baseline_refresh_seconds', 0, 604800, true);

  -- One evaluation at a time: a sweep that finds another one evaluating leaves it to it.
  insert into public.ai_jobs_alert_state (id) values (true) on conflict (id) do nothing;
  select s.* into v_state from public.ai_jobs_alert_state s where s.id for update skip locked;
  if not found then
    return;
  end if;

  if v_state.last_evaluated_at is null
     or v_state.last_evaluated_at <= now() - make_interval(secs => v_evaluate_every_seconds) then
    -- 7-day p95 baselines, recomputed at most every baseline_refresh_seconds.
    if v_state.baseline_computed_at is null
       or v_state.baseline_computed_at <= now() - make_interval(secs => v_baseline_refresh_seconds) then
      select coalesce(jsonb_object_agg(b.job_type, jsonb_build_object('p95_seconds', b.p95, 'samples', b.samples)), '{}'::jsonb)
      into v_state.baselines
      from (
        select j.job_type,
          percentile_cont(0.95) within group (
            order by extract(epoch from j.finished_at - j.started_at)::double precision) as p95,
          count(*) as samples
        from public.ai_jobs j
        where j.status = 'completed'
          and j.finished_at > now() - interval '7 days 1 hour'
          and j.finished_at <= now() - interval '1 hour'
          and j.started_at is not null
        group by j.job_type
      ) b;
      v_state.baseline_computed_at := now();
    end if;

    with active as (
      select j.job_type,
        count(*) filter (where j.status = 'pending' and j.run_at <= now()) as due,
        min(j.run_at) filter (where j.status = 'pending' and j.run_at <= now()) as oldest_due_at,
        count(*) filter (where j.status = 'running' and j.lease_expires_at < now()) as expired_leases,
        count(*) filter (where j.status = 'pending'
                           and j.run_at <= now() - make_interval(secs => v_stuck_pending_seconds)) as overdue
      from public.ai_jobs j
      where j.status in ('pending', 'running')
      group by j.job_type
    ),
    recent as (
      select j.job_type,
        count(*) filter (where j.status = 'failed') as failed,
        count(*) filter (where j.status in ('completed', 'failed')) as finished,
        count(*) filter (where j.status = 'completed' and j.started_at is not null) as completed,
        percentile_cont(0.95) within group (
          order by extract(epoch from j.finished_at - j.started_at)::double precision)
          filter (where j.status = 'completed' and j.started_at is not null) as p95
      from public.ai_jobs j
      where j.status in ('completed', 'failed', 'cancelled')
        and j.finished_at > now() - interval '1 hour'
      group by j.job_type
    ),
    types as (
      select a.job_type from active a
      union select r.job_type from recent r
      union select o.job_type from public.ai_jobs_alerts o where o.resolved_at is null
    ),
    metrics as (
      select t.job_type,
        coalesce(a.due, 0) as due, a.oldest_due_at,
        coalesce(a.expired_leases, 0) as expired_leases, coalesce(a.overdue, 0) as overdue,
        coalesce(r.failed, 0) as failed, coalesce(r.finished, 0) as finished,
        coalesce(r.completed, 0) as completed, r.p95,
        (v_state.baselines -> t.job_type ->> 'p95_seconds')::double precision as baseline_p95,
        coalesce((v_state.baselines -> t.job_type ->> 'samples')::bigint, 0) as baseline_samples
      from types t
      left join active a on a.job_type = t.job_type
      left join recent r on r.job_type = t.job_type
    ),
    readings as (
      select m.job_type, x.kind, coalesce(x.firing, false) as firing, x.value, x.threshold, x.details
      from metrics m
      cross join lateral (values
        ('failure_rate',
         m.finished >= v_failure_min_jobs and m.failed::double precision / nullif(m.finished, 0) > v_failure_rate,
         m.failed::double precision / nullif(m.finished, 0),
         v_failure_rate,
         jsonb_build_object('failed', m.failed, 'finished', m.finished, 'min_jobs', v_failure_min_jobs,
                            'window_seconds', 3600)),
        ('queue_depth',
         m.due > v_queue_depth,
         m.due::double precision,
         v_queue_depth::double precision,
         jsonb_build_object('due', m.due, 'oldest_due_at', m.oldest_due_at)),
        ('p95_duration',
         m.completed >= v_p95_min_samples and m.baseline_samples >= v_p95_min_samples
           and m.baseline_p95 > 0 and m.p95 > v_p95_factor * m.baseline_p95,
         m.p95,
         v_p95_factor * m.baseline_p95,
         jsonb_build_object('p95_seconds', m.p95, 'samples', m.completed,
                            'baseline_p95_seconds', m.baseline_p95, 'baseline_samples', m.baseline_samples,
                            'factor', v_p95_factor, 'min_samples', v_p95_min_samples,
                            'window_seconds', 3600, 'baseline_window_seconds', 7 * 86400)),
        ('stuck_jobs',
         m.expired_leases + m.overdue > v_stuck_jobs,
         (m.expired_leases + m.overdue)::double precision,
         v_stuck_jobs::double precision,
         jsonb_build_object('expired_leases', m.expired_leases, 'pending_overdue', m.overdue,
                            'pending_overdue_after_seconds', v_stuck_pending_seconds))
      ) as x (kind, firing, value, threshold, details)
    ),
    opened as (
      insert into public.ai_jobs_alerts as a (job_type, kind, value, threshold, details)
      select r.job_type, r.kind, r.value, r.threshold, r.details
      from readings r
      where r.firing
        and not exists (
          select 1 from public.ai_jobs_alerts o
          where o.resolved_at is null and o.job_type = r.job_type and o.kind = r.kind)
      on conflict (job_type, kind) where resolved_at is null do nothing
      returning a.id
    ),
    refreshed as (
      update public.ai_jobs_alerts a set
        last_seen_at = now(), value = r.value, threshold = r.threshold, details = r.details
      from readings r
      where a.resolved_at is null and a.job_type = r.job_type and a.kind = r.kind and r.firing
      returning a.id
    ),
    resolved as (
      update public.ai_jobs_alerts a set
        resolved_at = greatest(now(), a.opened_at), value = r.value, threshold = r.threshold, details = r.details
      from readings r
      where a.resolved_at is null and a.job_type = r.job_type and a.kind = r.kind and not r.firing
      returning a.id
    )
    select
      coalesce((select array_agg(o.id) from opened o), '{}'),
      coalesce((select array_agg(s.id) from resolved s), '{}')
    into v_opened, v_resolved;

    update public.ai_jobs_alert_state s set
      last_evaluated_at = now(),
      baseline_computed_at = v_state.baseline_computed_at,
      baselines = v_state.baselines
    where s.id;

    -- Retention: resolved incidents are kept 30 days.
    delete from public.ai_jobs_alerts a where a.resolved_at < now() - interval '30 days';
  end if;

  return query
  with due as (
    select a.id, case when a.resolved_at is null then 'opened' else 'resolved' end as event
    from public.ai_jobs_alerts a
    where (
        a.id = any (v_opened) or a.id = any (v_resolved)
        or a.notify_claimed_until is null or a.notify_claimed_until < now()
      )
      and (
        (a.resolved_at is null and a.notified_at is null and a.opened_at > now() - interval '24 hours')
        or (a.resolved_at is not null and a.resolution_notified_at is null
            and a.resolved_at > now() - interval '24 hours')
      )
    for update skip locked
  )
  update public.ai_jobs_alerts a set notify_claimed_until = now() + interval '60 seconds'
  from due d
  where a.id = d.id
  returning d.event, (a.id = any (v_opened) or a.id = any (v_resolved)), a.id, a.job_type, a.kind,
    a.opened_at, a.last_seen_at, a.resolved_at, a.value, a.threshold, a.details,
    a.notified_at, a.resolution_notified_at;
end
$$;

-- Record the outcome of one notification: delivered (a 2xx) sets notified_at for
-- 'opened' or resolution_notified_at for 'resolved'; not delivered only gives the
-- row back, so the next sweep retries it. False when the alert no longer exists.
create or replace function public.ai_jobs_mark_alert_notified_v1(
  p_alert_id uuid,
  p_event text,
  p_delivered boolean default true
)
returns boolean
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_event is null or p_event not in ('opened', 'resolved') then
    raise exception using errcode = '22023',
      message = format('event must be opened or resolved, got %s', coalesce(p_event, 'null'));
  end if;
  update public.ai_jobs_alerts a set
    notified_at = case when p_delivered and p_event = 'opened'
                       then coalesce(a.notified_at, now()) else a.notified_at end,
    resolution_notified_at = case when p_delivered and p_event = 'resolved'
                                  then coalesce(a.resolution_notified_at, now()) else a.resolution_notified_at end,
    notify_claimed_until = null
  where a.id = p_alert_id;
  return found;
end
$$;

-- Open incidents, then those resolved within p_resolved_within_seconds, newest first.
create or replace function public.ai_jobs_alerts_v1(
  p_resolved_within_seconds integer default 86400,
  p_limit integer default 100
)
returns setof public.ai_jobs_alerts
language sql stable
set search_path = ''
as $$
  select * from public.ai_jobs_alerts a
  where a.resolved_at is null
     or a.resolved_at > now() - make_interval(secs => greatest(coalesce(p_resolved_within_seconds, 86400), 0))
  order by a.resolved_at is not null, coalesce(a.resolved_at, a.opened_at) desc, a.id
  limit least(greatest(coalesce(p_limit, 100), 1), 1000)
$$;

revoke all on function public.ai_jobs_alert_setting(jsonb, text, numeric, numeric, boolean) from public, anon, authenticated;
grant execute on function public.ai_jobs_alert_setting(jsonb, text, numeric, numeric, boolean) to service_role;
revoke all on function public.ai_jobs_evaluate_alerts_v1(jsonb) from public, anon, authenticated;
grant execute on function public.ai_jobs_evaluate_alerts_v1(jsonb) to service_role;
revoke all on function public.ai_jobs_mark_alert_notified_v1(uuid, text, boolean) from public, anon, authenticated;
grant execute on function public.ai_jobs_mark_alert_notified_v1(uuid, text, boolean) to service_role;
revoke all on function public.ai_jobs_alerts_v1(integer, integer) from public, anon, authenticated;
grant execute on function public.ai_jobs_alerts_v1(integer, integer) to service_role;
