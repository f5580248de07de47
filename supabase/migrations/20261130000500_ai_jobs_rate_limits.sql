-- ai-jobs: Claude rate limits shared by every worker invocation.
--
-- Parallel serverless workers each call Claude; together they hit the Anthropic
-- organization's limits (requests, input tokens and output tokens per minute, per
-- model) and collect 429s. Here the limits are kept in the database, so every
-- invocation sees the same budget:
--
--   ai_jobs_rate_acquire_v1  before a call: reserve 1 request + estimated input tokens
--                            + max_tokens output in each limited bucket, or say how
--                            many seconds until the window has room
--   ai_jobs_rate_settle_v1   after the call: correct the reservation to what was billed
--   ai_jobs_defer_v1         a job that would exceed a limit goes back to pending at
--                            now + wait, without spending an attempt or recording an error
--
-- The window slides: a reservation counts for 60 s after it was made (fixed minute
-- windows would let twice the limit through around a minute boundary). Acquires on
-- the same bucket are serialized by a transaction-scoped advisory lock, so concurrent
-- workers can never both take the last of the capacity.
-- Idempotent: the table and index are guarded, functions are created with "or replace".

-- Why a pending job waits (20261130000400 adds it, with its format check; repeated
-- here, guarded, so this file does not depend on that one being applied first).
alter table public.ai_jobs add column if not exists wait_reason text;

create table if not exists public.ai_jobs_rate_reservations (
  id            uuid not null,
  bucket        text not null,
  at            timestamptz not null default clock_timestamp(),
  requests      integer not null default 1,
  input_tokens  integer not null default 0,
  output_tokens integer not null default 0,
  job_id        uuid,
  constraint ai_jobs_rate_reservations_pkey primary key (id, bucket),
  constraint ai_jobs_rate_reservations_bucket_length check (length(bucket) between 1 and 200),
  constraint ai_jobs_rate_reservations_counts
    check (requests >= 0 and input_tokens >= 0 and output_tokens >= 0)
);

comment on table public.ai_jobs_rate_reservations is
  'Claude calls of the last minute per rate-limit bucket (model:<model>, type:<job_type>): '
  'reserved before the call, settled to the billed usage after. Written only by ai_jobs_rate_*_v1.';

-- The window sum: one bucket's rows of the last 60 s.
create index if not exists ai_jobs_rate_reservations_window_idx
  on public.ai_jobs_rate_reservations (bucket, at);

alter table public.ai_jobs_rate_reservations enable row level security;
revoke all on table public.ai_jobs_rate_reservations from public, anon, authenticated;
grant select, insert, update, delete on table public.ai_jobs_rate_reservations to service_role;

-- Reserve capacity for one call in every bucket of p_limits, or say how long to wait.
--
-- p_limits: {"<bucket>": {"rpm": n, "itpm": n, "otpm": n}, ...}; each limit optional.
-- Returns {"reservation": "<uuid>"} when the call fits in every bucket (one row per
-- bucket is recorded at the database's clock), else
-- {"wait_seconds": s, "bucket": "<bucket>", "limit": "rpm"|"itpm"|"otpm", "used": n, "max": n}
-- with s the time until enough of the window's oldest reservations expire for the
-- call to fit in every bucket (the longest wait across buckets and limits).
-- A call larger than a limit on its own (max_tokens above otpm) fits only into an
-- empty window, so it still runs, alone.
-- p_window_seconds is 60 in production; tests use shorter windows.
create or replace function public.ai_jobs_rate_acquire_v1(
  p_limits jsonb,
  p_input_tokens integer,
  p_output_tokens integer,
  p_job_id uuid default null,
  p_window_seconds double precision default 60
)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_bucket text;
  v_limit jsonb;
  v_kind text;
  v_need bigint;
  v_max bigint;
  v_used bigint;
  v_now timestamptz;
  v_window interval;
  v_free_at timestamptz;
  v_wait double precision;
  v_worst jsonb;
  v_id uuid;
begin
  if p_limits is null or jsonb_typeof(p_limits) <> 'object'
     or (select count(*) from jsonb_object_keys(p_limits)) not between 1 and 20 then
    raise exception using errcode = '22023',
      message = 'limits must be an object of 1 to 20 buckets, e.g. {"model:claude-sonnet-5-5": {"rpm": 50}}';
  end if;
  for v_bucket, v_limit in select e.key, e.value from jsonb_each(p_limits) e loop
    if length(v_bucket) not between 1 and 200 or jsonb_typeof(v_limit) <> 'object' or exists (
      select 1 from jsonb_each(v_limit) l
      where case
        when l.key not in ('rpm', 'itpm', 'otpm') or jsonb_typeof(l.value) <> 'number' then true
        else (l.value)::numeric <> trunc((l.value)::numeric) or (l.value)::numeric not between 1 and 2000000000
      end
    ) then
      raise exception using errcode = '22023',
        message = format('limits of bucket %s must be an object of rpm, itpm, otpm: whole numbers from 1', left(v_bucket, 200));
    end if;
  end loop;
  if p_input_tokens is null or p_input_tokens < 0 or p_output_tokens is null or p_output_tokens < 0 then
    raise exception using errcode = '22023', message = 'input_tokens and output_tokens must be 0 or more';
  end if;
  if p_window_seconds is null or p_window_seconds not between 1 and 60 then
    raise exception using errcode = '22023',
      message = format('window_seconds must be between 1 and 60, got %s', p_window_seconds);
  end if;

  -- One acquire per bucket at a time; buckets in a fixed order, so no deadlocks.
  for v_bucket in select k from jsonb_object_keys(p_limits) k order by k loop
    perform pg_advisory_xact_lock(hashtextextended('ai_jobs.rate:' || v_bucket, 0));
  end loop;
  -- The clock after the locks: rows committed while this call waited count.
  v_now := clock_timestamp();
  v_window := make_interval(secs => p_window_seconds);

  -- Rows past the longest window can never count again: drop these buckets' ones.
  delete from public.ai_jobs_rate_reservations r
  where r.bucket in (select jsonb_object_keys(p_limits)) and r.at <= v_now - interval '60 seconds';

  for v_bucket, v_limit in select e.key, e.value from jsonb_each(p_limits) e order by e.key loop
    for v_kind, v_need in
      select k.kind, k.need from (values ('rpm', 1::bigint), ('itpm', p_input_tokens::bigint),
                                         ('otpm', p_output_tokens::bigint)) as k (kind, need)
    loop
      v_max := (v_limit ->> v_kind)::bigint;
      continue when v_max is null;
      select coalesce(sum(case v_kind when 'rpm' then r.requests when 'itpm' then r.input_tokens
                                      else r.output_tokens end), 0)
        into v_used
      from public.ai_jobs_rate_reservations r
      where r.bucket = v_bucket and r.at > v_now - v_window;
      continue when v_used + least(v_need, v_max) <= v_max;
      -- Walk the window oldest first: the call fits once enough has expired.
      select w.at into v_free_at
      from (
        select r.at,
               sum(case v_kind when 'rpm' then r.requests when 'itpm' then r.input_tokens
                               else r.output_tokens end)
                 over (order by r.at, r.id rows between unbounded preceding and current row) as expired
        from public.ai_jobs_rate_reservations r
        where r.bucket = v_bucket and r.at > v_now - v_window
      ) w
      where v_used - w.expired + least(v_need, v_max) <= v_max
      order by w.at
      limit 1;
      v_wait := greatest(extract(epoch from (coalesce(v_free_at, v_now) + v_window - v_now))::double precision, 0)
                + 0.01;
      if v_worst is null or v_wait > (v_worst ->> 'wait_seconds')::double precision then
        v_worst := jsonb_build_object('wait_seconds', round(v_wait::numeric, 3), 'bucket', v_bucket,
                                      'limit', v_kind, 'used', v_used, 'max', v_max);
      end if;
    end loop;
  end loop;
  if v_worst is not null then
    return v_worst;
  end if;

  v_id := gen_random_uuid();
  insert into public.ai_jobs_rate_reservations (id, bucket, at, requests, input_tokens, output_tokens, job_id)
  select v_id, k, v_now, 1, p_input_tokens, p_output_tokens, p_job_id
  from jsonb_object_keys(p_limits) k;
  return jsonb_build_object('reservation', v_id);
end
$$;

-- After the call: the reservation now counts what was billed (input_tokens +
-- cache_creation_input_tokens, output_tokens), in every bucket it was made in.
-- False when the reservation has already left the window (nothing to correct).
create or replace function public.ai_jobs_rate_settle_v1(
  p_reservation uuid,
  p_input_tokens integer,
  p_output_tokens integer
)
returns boolean
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_reservation is null then
    raise exception using errcode = '22023', message = 'reservation is required';
  end if;
  if p_input_tokens is null or p_input_tokens < 0 or p_output_tokens is null or p_output_tokens < 0 then
    raise exception using errcode = '22023', message = 'input_tokens and output_tokens must be 0 or more';
  end if;
  update public.ai_jobs_rate_reservations r set
    input_tokens = p_input_tokens,
    output_tokens = p_output_tokens
  where r.id = p_reservation;
  return found;
end
$$;

-- Give a running job back because it has to wait (a rate limit): pending again at
-- now + p_delay_seconds (the database's clock, as acquire measured it), the attempt
-- the claim spent is given back, no error is recorded, completed steps stay.
-- wait_reason says why (e.g. rate_limited; the claim clears it when the job starts),
-- p_message (progress_message) says it in words for the owner.
-- A pending cancel wins, as with release.
create or replace function public.ai_jobs_defer_v1(
  p_job_id uuid,
  p_worker text,
  p_delay_seconds double precision,
  p_reason text,
  p_message text default null,
  p_usage jsonb default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
begin
  if p_delay_seconds is null or p_delay_seconds not between 0 and 86400 then
    raise exception using errcode = '22023',
      message = format('delay_seconds must be between 0 and 86400, got %s', p_delay_seconds);
  end if;
  if p_reason is null or p_reason !~ '^[a-z][a-z0-9_]{0,49}$' then
    raise exception using errcode = '22023', message = 'reason must be a short snake_case word, e.g. rate_limited';
  end if;
  return query
  update public.ai_jobs j set
    status = case when j.cancel_requested_at is null then 'pending' else 'cancelled' end,
    attempts = case when j.cancel_requested_at is null then greatest(j.attempts - 1, 0) else j.attempts end,
    usage = public.ai_jobs_usage_add(j.usage, p_usage),
    progress_message = coalesce(left(p_message, 1000), j.progress_message),
    wait_reason = case when j.cancel_requested_at is null then p_reason end,
    locked_by = null,
    lease_expires_at = null,
    run_at = now() + make_interval(secs => p_delay_seconds),
    finished_at = case when j.cancel_requested_at is null then null else now() end
  where j.id = p_job_id and j.status = 'running' and j.locked_by = p_worker
  returning j.*;
  if not found then
    perform public.ai_jobs_raise_not_leased(p_job_id, p_worker);
  end if;
end
$$;

revoke all on function public.ai_jobs_rate_acquire_v1(jsonb, integer, integer, uuid, double precision)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_rate_acquire_v1(jsonb, integer, integer, uuid, double precision)
  to service_role;
revoke all on function public.ai_jobs_rate_settle_v1(uuid, integer, integer) from public, anon, authenticated;
grant execute on function public.ai_jobs_rate_settle_v1(uuid, integer, integer) to service_role;
revoke all on function public.ai_jobs_defer_v1(uuid, text, double precision, text, text, jsonb)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_defer_v1(uuid, text, double precision, text, text, jsonb)
  to service_role;
