-- ai-jobs: fair claims, concurrency limits enforced at claim time, bounded run_at,
-- and locked_by hidden from browsers.
--
-- 1. Fairness. ai_jobs_claim_v2 interleaves owners instead of taking the oldest
--    jobs first: it walks the owners that have due jobs (a loose index scan over
--    max(8, batch + 2) of them per claim, starting at a random owner so no one is
--    always last), takes each one's next jobs (a lateral top-N, row-locked with SKIP
--    LOCKED), and orders them by priority, then by the owner's running jobs plus the
--    job's place in the owner's own queue, then by who was served least recently.
--    One user's 1,000 pending jobs therefore delay another user's first job by at
--    most one job per worker. Priority still comes first; end users can only lower
--    it (the API refuses priority > 0), job types and trusted server-side callers
--    set it.
-- 2. Concurrency limits, stored on the row at enqueue (user_limit, org_limit,
--    key_limit; null = none) so the claim needs no configuration. A job starts only
--    while fewer than its limit of its owner's (organization's, concurrency key's)
--    jobs are running, whatever their type. The claim takes a transaction-scoped
--    advisory lock per scope with try-lock (a scope another claimer is working on is
--    skipped; only when nothing else is claimable does the claim wait for it, at most
--    200 ms, once) and counts running jobs through partial indexes, so concurrent
--    claimers cannot overshoot. A job over a limit stays pending; the claim
--    records why in wait_reason (user_limit, org_limit, key_limit), writing only when
--    the value changes and never over a reason a worker gave (rate_limited, ...), and
--    clears it when the job starts. Concurrency keys are scoped to the organization
--    when the job has one, else to the user.
-- 3. run_at is bounded: ai_jobs_enqueue_v2 refuses anything outside [now - 1 minute,
--    now + 1 year] (22023), and a CHECK with absolute bounds keeps edge-of-range
--    timestamps (infinity, year 294276) out of the table for every writer.
-- 4. locked_by (worker host names and process ids) is not readable by
--    authenticated: column-level SELECT on every other column. A column added by a
--    later migration is hidden from browsers until that migration grants it.
-- Idempotent: guarded DDL, "create or replace" functions, privileges restated.

-- Columns --------------------------------------------------------------------------

alter table public.ai_jobs
  add column if not exists org_id text,
  add column if not exists concurrency_key text,
  add column if not exists user_limit integer,
  add column if not exists org_limit integer,
  add column if not exists key_limit integer,
  add column if not exists wait_reason text;

comment on column public.ai_jobs.org_id is
  'The owner''s organization when the job was created (from the access token), or null.';
comment on column public.ai_jobs.concurrency_key is
  'Caller-chosen key (e.g. decision:123); at most key_limit running jobs share one, per organization (else per user).';
comment on column public.ai_jobs.user_limit is
  'The job starts only while fewer than this many of its owner''s jobs run; null: no limit.';
comment on column public.ai_jobs.org_limit is
  'The job starts only while fewer than this many of its organization''s jobs run; null: no limit.';
comment on column public.ai_jobs.key_limit is
  'The job starts only while fewer than this many jobs with its concurrency key run; null: no limit.';
comment on column public.ai_jobs.wait_reason is
  'Why this pending job waits: user_limit, org_limit, key_limit (set by the claim), or a reason a worker gave when it deferred the job; null once it starts.';

-- Existing rows outside the absolute bounds (only possible before this migration)
-- are brought inside them, so the constraint below can be validated.
update public.ai_jobs
set run_at = least(greatest(run_at, timestamptz '2000-01-01 00:00:00+00'),
                   timestamptz '2199-12-31 00:00:00+00')
where run_at < timestamptz '2000-01-01 00:00:00+00' or run_at >= timestamptz '2200-01-01 00:00:00+00';

-- Constraints: added NOT VALID, then validated (a lighter lock than a plain ADD).
do $constraints$
declare
  r record;
begin
  for r in
    select * from (values
      ('ai_jobs_run_at_range',
       'check (run_at >= timestamptz ''2000-01-01 00:00:00+00'' and run_at < timestamptz ''2200-01-01 00:00:00+00'')'),
      ('ai_jobs_concurrency_key_format',
       'check (concurrency_key ~ ''^[A-Za-z0-9][A-Za-z0-9._:/=@+-]{0,199}$'')'),
      ('ai_jobs_org_id_format',
       'check (length(org_id) between 1 and 200 and org_id !~ ''[[:cntrl:]]'')'),
      ('ai_jobs_limits_range',
       'check (user_limit between 1 and 10000 and org_limit between 1 and 10000 and key_limit between 1 and 10000)'),
      ('ai_jobs_wait_reason_format',
       'check (wait_reason ~ ''^[a-z][a-z0-9_]{0,49}$'')')
    ) as c (name, def)
  loop
    if not exists (
      select 1 from pg_constraint
      where conrelid = 'public.ai_jobs'::regclass and conname = r.name
    ) then
      execute format('alter table public.ai_jobs add constraint %I %s not valid', r.name, r.def);
    end if;
    if exists (
      select 1 from pg_constraint
      where conrelid = 'public.ai_jobs'::regclass and conname = r.name and not convalidated
    ) then
      execute format('alter table public.ai_jobs validate constraint %I', r.name);
    end if;
  end loop;
end
$constraints$;

-- Indexes --------------------------------------------------------------------------

-- Owners with pending jobs (loose index scan) and each owner's next jobs in order.
create index if not exists ai_jobs_pending_owner_idx
  on public.ai_jobs (user_id, priority desc, run_at, id) where status = 'pending';
-- Each owner's most recent start: ties in the fair order go to the owner served
-- least recently.
create index if not exists ai_jobs_owner_started_idx
  on public.ai_jobs (user_id, started_at desc) where started_at is not null;
-- Running jobs per user, organization and concurrency key (limits and fair order).
create index if not exists ai_jobs_running_user_idx
  on public.ai_jobs (user_id) where status = 'running';
create index if not exists ai_jobs_running_org_idx
  on public.ai_jobs (org_id) where status = 'running' and org_id is not null;
create index if not exists ai_jobs_running_key_idx
  on public.ai_jobs (concurrency_key, org_id, user_id) where status = 'running' and concurrency_key is not null;

-- run_at ----------------------------------------------------------------------------

-- The range a caller may ask for: not in the past (a minute of clock skew allowed)
-- and not more than a year ahead.
create or replace function public.ai_jobs_check_run_at(p_run_at timestamptz)
returns void
language plpgsql stable
set search_path = ''
as $$
begin
  if p_run_at is not null
     and (p_run_at < now() - interval '1 minute' or p_run_at > now() + interval '1 year') then
    raise exception using errcode = '22023',
      message = format('run_at must be between 1 minute ago and 1 year from now, got %s', p_run_at),
      hint = 'leave run_at out to start as soon as possible';
  end if;
end
$$;

-- Enqueue ---------------------------------------------------------------------------

-- v1 plus: run_at bounds, the organization, a concurrency key and the limits the
-- claim enforces (null = no limit).
create or replace function public.ai_jobs_enqueue_v2(
  p_user_id uuid,
  p_job_type text,
  p_input jsonb default '{}'::jsonb,
  p_priority integer default 0,
  p_run_at timestamptz default null,
  p_idempotency_key text default null,
  p_parent_id uuid default null,
  p_metadata jsonb default '{}'::jsonb,
  p_max_attempts integer default 3,
  p_max_active integer default null,
  p_org_id text default null,
  p_concurrency_key text default null,
  p_user_limit integer default null,
  p_org_limit integer default null,
  p_key_limit integer default null
)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  v_job public.ai_jobs;
  v_active integer;
begin
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'user_id is required';
  end if;
  perform public.ai_jobs_check_run_at(p_run_at);
  if p_concurrency_key is not null and p_concurrency_key !~ '^[A-Za-z0-9][A-Za-z0-9._:/=@+-]{0,199}$' then
    raise exception using errcode = '22023',
      message = 'concurrency_key must be 1 to 200 characters: letters, digits and . _ : / = @ + -, starting with a letter or digit';
  end if;
  if p_org_id is not null and (length(p_org_id) not between 1 and 200 or p_org_id ~ '[[:cntrl:]]') then
    raise exception using errcode = '22023', message = 'org_id must be 1 to 200 characters without control characters';
  end if;
  if p_user_limit not between 1 and 10000 or p_org_limit not between 1 and 10000
     or p_key_limit not between 1 and 10000 then
    raise exception using errcode = '22023',
      message = format('concurrency limits must be between 1 and 10000 (or null for none), got user %s, org %s, key %s',
                       coalesce(p_user_limit::text, 'none'), coalesce(p_org_limit::text, 'none'),
                       coalesce(p_key_limit::text, 'none'));
  end if;
  -- One enqueue per user at a time, so the cap and the idempotency check are exact.
  perform pg_advisory_xact_lock(hashtextextended('ai_jobs.enqueue:' || p_user_id::text, 0));

  if p_idempotency_key is not null then
    select * into v_job from public.ai_jobs j
    where j.user_id = p_user_id and j.idempotency_key = p_idempotency_key;
    if found then
      if v_job.job_type <> p_job_type or v_job.input <> coalesce(p_input, '{}'::jsonb) then
        raise exception using errcode = 'AJ005',
          message = format('idempotency key %L was already used for a different request (job %s)',
                           p_idempotency_key, v_job.id),
          hint = 'use a new idempotency key for a different job';
      end if;
      return jsonb_build_object('created', false, 'job', to_jsonb(v_job));
    end if;
  end if;

  if p_max_active is not null then
    select count(*) into v_active from public.ai_jobs j
    where j.user_id = p_user_id and j.status in ('pending', 'running');
    if v_active >= p_max_active then
      raise exception using errcode = 'AJ001',
        message = format('active job limit reached: %s of %s jobs pending or running', v_active, p_max_active),
        hint = 'wait for a job to finish, or cancel one';
    end if;
  end if;

  if p_parent_id is not null and not exists (
    select 1 from public.ai_jobs j where j.id = p_parent_id and j.user_id = p_user_id
  ) then
    raise exception using errcode = 'AJ002', message = format('parent job %s not found', p_parent_id);
  end if;

  insert into public.ai_jobs (user_id, job_type, input, priority, run_at, idempotency_key,
                              parent_id, metadata, max_attempts, org_id, concurrency_key,
                              user_limit, org_limit, key_limit)
  values (p_user_id, p_job_type, coalesce(p_input, '{}'::jsonb), coalesce(p_priority, 0),
          coalesce(p_run_at, now()), p_idempotency_key, p_parent_id,
          coalesce(p_metadata, '{}'::jsonb), coalesce(p_max_attempts, 3), p_org_id, p_concurrency_key,
          p_user_limit, p_org_limit, p_key_limit)
  returning * into v_job;

  return jsonb_build_object('created', true, 'job', to_jsonb(v_job));
end
$$;

-- Claim -----------------------------------------------------------------------------

-- Owners with due jobs (of these types), walked in user_id order from p_start,
-- wrapping around: a loose index scan, one index probe per owner.
create or replace function public.ai_jobs_due_owners(p_start uuid, p_job_types text[], p_limit integer)
returns uuid[]
language plpgsql stable
set search_path = ''
as $$
begin
  -- plpgsql, not sql: the plan is prepared once per session instead of on every call
  return (
  with recursive owners (user_id, n, wrapped) as (
    -- the first owner at or after p_start, else the first owner (wrapped)
    select f.user_id, 1, f.wrapped from (
      (select j.user_id, false as wrapped from public.ai_jobs j
       where j.status = 'pending' and j.user_id >= p_start order by j.user_id limit 1)
      union all
      (select j.user_id, true from public.ai_jobs j
       where j.status = 'pending' order by j.user_id limit 1)
      limit 1
    ) f
    union all
    -- the next owner; past the last one, wrap around to those before p_start
    select nx.user_id, o.n + 1, nx.wrapped
    from owners o
    cross join lateral (
      (select j.user_id, o.wrapped from public.ai_jobs j
       where j.status = 'pending' and j.user_id > o.user_id and (not o.wrapped or j.user_id < p_start)
       order by j.user_id limit 1)
      union all
      (select j.user_id, true from public.ai_jobs j
       where not o.wrapped and j.status = 'pending' and j.user_id < p_start
       order by j.user_id limit 1)
      limit 1
    ) nx
    where o.n < 10000  -- owners with only future (or other types') jobs walked at most
  )
  select array_agg(d.user_id) from (
    select o.user_id from owners o
    where exists (
      select 1 from public.ai_jobs j
      where j.user_id = o.user_id and j.status = 'pending' and j.run_at <= now()
        and (p_job_types is null or j.job_type = any (p_job_types))
    )
    limit p_limit
  ) d
  );
end
$$;

-- Claim up to p_limit due jobs for p_worker, fairly across owners and within the
-- jobs' concurrency limits. Each job goes to exactly one caller (candidates are
-- row-locked with SKIP LOCKED, as in v1) and spends one attempt; expired leases are
-- reaped first (as in v1).
create or replace function public.ai_jobs_claim_v2(
  p_worker text,
  p_limit integer default 1,
  p_lease_seconds integer default 30,
  p_job_types text[] default null,
  p_job_id uuid default null
)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
set plan_cache_mode = force_generic_plan  -- plan the candidate queries once per session, not per claim
as $$
declare
  v_owners uuid[];
  v_per_owner integer;
  v_more boolean := false;   -- an owner may have more due jobs than this round fetched
  v_candidates refcursor;
  c record;
  v_picks uuid[] := '{}';    -- claimed (their row locks are held)
  v_seen uuid[] := '{}';     -- candidates examined (and row-locked) so far
  v_running jsonb := '{}';   -- scope -> running jobs, for scopes whose lock this transaction holds
  v_busy text[] := '{}';     -- scopes another claimer holds: skipped, not waited on
  v_scopes text[];
  v_limits integer[];
  v_reasons text[];
  v_reason text;
  v_skip boolean;
  v_n integer;
  v_waited boolean := false;
  v_lock_timeout text;
  i integer;
begin
  if p_worker is null or length(p_worker) not between 1 and 200 then
    raise exception using errcode = '22023', message = 'worker id must be 1 to 200 characters';
  end if;
  if p_limit is null or p_limit not between 1 and 1000 then
    raise exception using errcode = '22023', message = format('limit must be between 1 and 1000, got %s', p_limit);
  end if;
  perform public.ai_jobs_check_lease_seconds(p_lease_seconds);

  perform public.ai_jobs_reap_v1(100);

  <<attempt>>
  loop
    v_seen := '{}';
    v_more := false;
    if p_job_id is null then
      -- a window of owners with due jobs, from a random one on, so nobody is always last
      v_owners := public.ai_jobs_due_owners(gen_random_uuid(), p_job_types, greatest(p_limit + 2, 8));
      if v_owners is null then
        return;
      end if;
      -- first round: each owner's next few jobs, enough to fill the claim; a second
      -- round takes up to p_limit more per owner when limits or other claimers held
      -- the first ones back
      v_per_owner := least(p_limit, (p_limit + cardinality(v_owners) - 1) / cardinality(v_owners));
    end if;

    loop
      if p_job_id is not null then
        open v_candidates for
          select j.id, j.user_id, j.org_id, j.concurrency_key, j.user_limit, j.org_limit, j.key_limit,
                 j.wait_reason, 1::bigint as place
          from public.ai_jobs j
          where j.id = p_job_id and j.status = 'pending' and j.run_at <= now()
            and (p_job_types is null or j.job_type = any (p_job_types))
          for update skip locked;
      else
        open v_candidates for
          select q.id, q.user_id, q.org_id, q.concurrency_key, q.user_limit, q.org_limit, q.key_limit,
                 q.wait_reason, row_number() over (partition by q.user_id order by q.priority desc, q.run_at, q.id) as place
          from unnest(v_owners) as o (user_id)
          cross join lateral (
            select count(*) as running from public.ai_jobs r where r.user_id = o.user_id and r.status = 'running'
          ) r
          cross join lateral (
            select max(s.started_at) as at from public.ai_jobs s
            where s.user_id = o.user_id and s.started_at is not null
          ) last_start
          cross join lateral (
            select j.id, j.user_id, j.org_id, j.concurrency_key, j.user_limit, j.org_limit, j.key_limit,
                   j.wait_reason, j.priority, j.run_at
            from public.ai_jobs j
            where j.user_id = o.user_id and j.status = 'pending' and j.run_at <= now()
              and (p_job_types is null or j.job_type = any (p_job_types))
              and j.id <> all (v_seen)
            order by j.priority desc, j.run_at, j.id
            limit v_per_owner
            for update skip locked
          ) q
          -- water-filling: the owner with the fewest jobs running (counting the ones
          -- this claim starts first) goes next, on a tie the one served least
          -- recently; priority still comes first
          order by q.priority desc,
                   r.running + row_number() over (partition by q.user_id order by q.priority desc, q.run_at, q.id),
                   last_start.at nulls first, q.run_at, q.id;
      end if;

      loop
        exit when cardinality(v_picks) >= p_limit;
        fetch v_candidates into c;
        exit when not found;
        v_seen := v_seen || c.id;
        v_more := v_more or c.place >= v_per_owner;
        if c.user_limit is null and c.org_limit is null and c.key_limit is null then
          v_picks := v_picks || c.id;  -- no limits: nothing to lock or count
          continue;
        end if;

        -- the job's limited scopes: its user, its organization, its concurrency key
        v_scopes := '{}';
        v_limits := '{}';
        v_reasons := '{}';
        if c.user_limit is not null then
          v_scopes := v_scopes || ('u:' || c.user_id::text);
          v_limits := v_limits || c.user_limit;
          v_reasons := v_reasons || 'user_limit'::text;
        end if;
        if c.org_limit is not null and c.org_id is not null then
          v_scopes := v_scopes || ('o:' || c.org_id);
          v_limits := v_limits || c.org_limit;
          v_reasons := v_reasons || 'org_limit'::text;
        end if;
        if c.key_limit is not null and c.concurrency_key is not null then
          v_scopes := v_scopes || (case when c.org_id is not null then 'ko:' || c.org_id else 'ku:' || c.user_id::text end
                                   || ' ' || c.concurrency_key);
          v_limits := v_limits || c.key_limit;
          v_reasons := v_reasons || 'key_limit'::text;
        end if;

        v_skip := false;
        v_reason := null;
        for i in 1 .. coalesce(cardinality(v_scopes), 0) loop
          if v_scopes[i] = any (v_busy) then
            v_skip := true;
            exit;
          end if;
          if not v_running ? v_scopes[i] then
            if not pg_try_advisory_xact_lock(hashtextextended('ai_jobs.claim:' || v_scopes[i], 0)) then
              v_busy := v_busy || v_scopes[i];
              v_skip := true;
              exit;
            end if;
            -- counted once the lock is held: every earlier claim in this scope has committed
            if v_reasons[i] = 'user_limit' then
              select count(*) into v_n from public.ai_jobs x
              where x.user_id = c.user_id and x.status = 'running';
            elsif v_reasons[i] = 'org_limit' then
              select count(*) into v_n from public.ai_jobs x
              where x.org_id = c.org_id and x.status = 'running';
            else
              select count(*) into v_n from public.ai_jobs x
              where x.concurrency_key = c.concurrency_key and x.status = 'running'
                and (case when c.org_id is not null then x.org_id = c.org_id
                          else x.org_id is null and x.user_id = c.user_id end);
            end if;
            v_running := v_running || jsonb_build_object(v_scopes[i], v_n);
          end if;
          if (v_running ->> v_scopes[i])::integer >= v_limits[i] then
            v_reason := v_reasons[i];
            exit;
          end if;
        end loop;
        continue when v_skip;

        if v_reason is not null then
          -- say why it waits, once (no write when nothing changed; the row lock is
          -- ours). A reason a worker gave (rate_limited, claude_batch, ...) is kept:
          -- other functions act on it, and the claim clears it when the job starts.
          if c.wait_reason is distinct from v_reason
             and (c.wait_reason is null or c.wait_reason in ('user_limit', 'org_limit', 'key_limit')) then
            update public.ai_jobs x set wait_reason = v_reason where x.id = c.id;
          end if;
          continue;
        end if;

        v_picks := v_picks || c.id;
        for i in 1 .. coalesce(cardinality(v_scopes), 0) loop
          v_running := v_running || jsonb_build_object(v_scopes[i], (v_running ->> v_scopes[i])::integer + 1);
        end loop;
      end loop;
      close v_candidates;

      exit when p_job_id is not null or cardinality(v_picks) >= p_limit or not v_more or v_per_owner >= p_limit;
      v_per_owner := p_limit;
      v_more := false;
    end loop;

    -- Nothing claimable, but another claimer holds a scope (it is claiming that user's,
    -- organization's or key's jobs right now): rather than return empty-handed, wait
    -- for its commit, briefly and once, then look again.
    exit attempt when cardinality(v_picks) > 0 or cardinality(v_busy) = 0 or v_waited;
    v_waited := true;
    v_lock_timeout := current_setting('lock_timeout');
    begin
      perform set_config('lock_timeout', '200ms', true);
      perform pg_advisory_xact_lock(hashtextextended('ai_jobs.claim:' || v_busy[1], 0));
      perform set_config('lock_timeout', v_lock_timeout, true);
    exception when lock_not_available then
      exit attempt;
    end;
    v_busy := '{}';
  end loop;

  return query
  update public.ai_jobs j set
    status = 'running',
    attempts = j.attempts + 1,
    locked_by = p_worker,
    lease_expires_at = now() + make_interval(secs => p_lease_seconds),
    started_at = coalesce(j.started_at, now()),
    wait_reason = null
  where j.id = any (v_picks)
  returning j.*;
end
$$;

-- Privileges ------------------------------------------------------------------------

-- Browsers read their own rows through RLS, every column but locked_by.
do $columns$
declare
  v_columns text;
begin
  select string_agg(quote_ident(a.attname), ', ' order by a.attnum) into v_columns
  from pg_attribute a
  where a.attrelid = 'public.ai_jobs'::regclass and a.attnum > 0 and not a.attisdropped
    and a.attname <> 'locked_by';
  revoke select on table public.ai_jobs from authenticated;
  execute format('grant select (%s) on table public.ai_jobs to authenticated', v_columns);
end
$columns$;

revoke all on function public.ai_jobs_check_run_at(timestamptz) from public, anon, authenticated;
grant execute on function public.ai_jobs_check_run_at(timestamptz) to service_role;
revoke all on function public.ai_jobs_enqueue_v2(uuid, text, jsonb, integer, timestamptz, text, uuid, jsonb,
                                                 integer, integer, text, text, integer, integer, integer)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_enqueue_v2(uuid, text, jsonb, integer, timestamptz, text, uuid, jsonb,
                                                    integer, integer, text, text, integer, integer, integer)
  to service_role;
revoke all on function public.ai_jobs_due_owners(uuid, text[], integer) from public, anon, authenticated;
grant execute on function public.ai_jobs_due_owners(uuid, text[], integer) to service_role;
revoke all on function public.ai_jobs_claim_v2(text, integer, integer, text[], uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_claim_v2(text, integer, integer, text[], uuid) to service_role;
