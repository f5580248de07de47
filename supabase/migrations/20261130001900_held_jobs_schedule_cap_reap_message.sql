-- Held-back jobs block nothing: the claim reaches the jobs behind them and an idle
-- invocation waits for work it could take.
--
-- 1. ai_jobs_claim_v2 (redefined, same signature and results; ai_jobs_complete_claim_v1/v2
--    call it, so the worker's fused statement gets it too). Before, a claim of 1 (every
--    worker invocation, the sweep's drain) looked at each owner's first due job only: when
--    that job's concurrency limit was full none of the owner's other jobs was claimed,
--    though ai_jobs_work_due_v1 and ai_jobs_stale_pending_v2 counted them as claimable, so
--    each wake-up called the sweep and the sweep requested work invocations that claimed
--    nothing. Now a held-back job does not stop the claim from taking the owner's next
--    job that can run, nor another owner's (details at the function).
-- 2. ai_jobs_next_due_v3: ai_jobs_next_due_v1 without the jobs whose concurrency limit
--    is full (ai_jobs_work_due_v1's rule). Before, one user's due job held back by its own
--    limit made "due now" true for every idle worker invocation, which then gave up after
--    about 2.5 s instead of waiting for another user's job due seconds later (on a
--    deployment whose only cron is daily, that job then waited for the next sweep).
--    ai_jobs_next_due_v1 stays for workers of the previous release.
-- 3. ai_jobs_fire_schedule_v1 (redefined, same signature and results) enqueues a tick's
--    job through ai_jobs_enqueue_many_v2, so the tick meets the API's active-job cap:
--    pending, running or paused jobs (migration 20261130001500). Before it went through
--    ai_jobs_enqueue_many_v1 -> ai_jobs_enqueue_v3, whose cap ignored paused jobs, so a
--    user at the cap could pause jobs and let a schedule queue more, then resume them all.
-- 4. ai_jobs_reap_v1 (redefined, same signature and results): the lease_expired error no
--    longer names the worker ('the worker stopped renewing its lease (attempt n of m)').
--    Owners read the error through the API, RLS and Realtime, while locked_by (worker host
--    names and process ids) is hidden from them by a column grant. The worker id goes to
--    the database's log instead (RAISE LOG, never sent to the client by default).
-- Idempotent: functions created with "or replace", privileges restated.

-- 1. The claim: a held-back job no longer blocks its owner's other jobs -------------------
--
-- ai_jobs_claim_v2 as in 20261130000400 (fair order, limits, SKIP LOCKED, reaping, one
-- attempt per claim), with two changes:
--   * Rounds. When a round's candidates were held back (a full limit, or a scope another
--     claimer holds) and the claim has fewer than p_limit jobs, it runs another round
--     over the owners that may have more due jobs (those that gave all the round asked
--     for), skipping every job whose limit it now knows to be full or whose scope is
--     busy; each round examines only jobs not examined before. Before, a second round
--     ran only while the per-owner share was below p_limit, so a claim of 1 (what every
--     worker asks for) looked at each owner's first due job only.
--   * A second window of owners. When the first window (max(8, p_limit + 2) owners from
--     a random one on) yields nothing and more owners have due jobs, the claim looks at
--     owners outside it that have a due job none of whose limits is full, counted as
--     ai_jobs_work_due_v1 counts them (ai_jobs_running_by_scope), from the same random
--     owner on. Before, owners past the window waited for a claim whose random window
--     held them.
-- So a claim takes a due job whenever ai_jobs_work_due_v1 / ai_jobs_stale_pending_v2 call
-- it claimable (unless another claimer holds its row or scope at that moment). The first
-- round is unchanged (the worker's hot path); the extra work is spent only by a claim that
-- would otherwise have come back short: the later rounds read the held-back jobs of the
-- window's owners, the second window one pass over the due jobs (as ai_jobs_work_due_v1
-- makes). Measured with 20 owners at their limit of 1 and 19,980 jobs held back: an empty
-- claim of 1 took 13 ms (1.7 ms before, when it also missed claimable jobs behind them).
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
  v_start uuid;
  v_window integer;
  v_owners uuid[];           -- the owners this round looks at
  v_next uuid[];             -- owners that gave all this round asked for: they may have more
  v_first uuid[];            -- the first window's owners
  v_second boolean;          -- looking at the second window
  v_per_owner integer;
  v_held boolean := false;   -- a candidate of this round was held back (full limit or busy scope)
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
  v_snapshot jsonb;
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
    v_second := false;
    if p_job_id is null then
      -- a window of owners with due jobs, from a random one on, so nobody is always last
      v_start := gen_random_uuid();
      v_window := greatest(p_limit + 2, 8);
      v_first := public.ai_jobs_due_owners(v_start, p_job_types, v_window);
      if v_first is null then
        return;
      end if;
      v_owners := v_first;
    end if;

    <<windows>>
    loop
      if p_job_id is null then
        -- first round: each owner's next few jobs, enough to fill the claim; later rounds
        -- take up to p_limit more per owner when limits or other claimers held jobs back
        v_per_owner := least(p_limit, (p_limit + cardinality(v_owners) - 1) / cardinality(v_owners));
      end if;

      <<rounds>>
      loop
        v_next := '{}';
        v_held := false;
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
                -- not a job this claim already knows it must hold back: a limit it counted
                -- as full (v_running: scopes whose lock it holds), a scope another claimer holds
                and (j.user_limit is null
                     or not ('u:' || j.user_id::text = any (v_busy)
                             or coalesce((v_running ->> ('u:' || j.user_id::text))::integer, 0) >= j.user_limit))
                and (j.org_limit is null or j.org_id is null
                     or not ('o:' || j.org_id = any (v_busy)
                             or coalesce((v_running ->> ('o:' || j.org_id))::integer, 0) >= j.org_limit))
                and (j.key_limit is null or j.concurrency_key is null
                     or not (coalesce('ko:' || j.org_id, 'ku:' || j.user_id::text) || ' ' || j.concurrency_key = any (v_busy)
                             or coalesce((v_running ->> (coalesce('ko:' || j.org_id, 'ku:' || j.user_id::text)
                                                         || ' ' || j.concurrency_key))::integer, 0) >= j.key_limit))
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
          if c.place >= v_per_owner then
            v_next := v_next || c.user_id;  -- gave all it was asked for: may have more
          end if;
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
          if v_skip then
            v_held := true;
            continue;
          end if;

          if v_reason is not null then
            v_held := true;
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

        -- another round while the claim is short and an owner may have more: when the
        -- first round asked each owner for less than p_limit, or something was held back
        -- (the next round skips what is known to be held, so it reaches the jobs behind)
        exit rounds when p_job_id is not null or cardinality(v_picks) >= p_limit or cardinality(v_next) = 0
                         or (v_per_owner >= p_limit and not v_held);
        v_owners := v_next;
        v_per_owner := p_limit;
      end loop;

      -- Nothing from the first window, and more owners have due jobs: once, the owners
      -- outside it with a due job that no limit holds back, as ai_jobs_work_due_v1 counts
      -- (committed running jobs; the rounds then count under the scope locks as always).
      exit windows when p_job_id is not null or cardinality(v_picks) > 0 or v_second
                        or cardinality(v_first) < v_window;  -- the window held every owner with due jobs
      v_second := true;
      v_snapshot := public.ai_jobs_running_by_scope();
      select array_agg(w.user_id order by w.user_id < v_start, w.user_id) into v_owners from (
        select j.user_id from public.ai_jobs j
        where j.status = 'pending' and j.run_at <= now()
          and (p_job_types is null or j.job_type = any (p_job_types))
          and j.user_id <> all (v_first)
          and (j.user_limit is null
               or coalesce((v_snapshot ->> ('u:' || j.user_id::text))::integer, 0) < j.user_limit)
          and (j.org_limit is null or j.org_id is null
               or coalesce((v_snapshot ->> ('o:' || j.org_id))::integer, 0) < j.org_limit)
          and (j.key_limit is null or j.concurrency_key is null
               or coalesce((v_snapshot ->> ('k:' || coalesce('o:' || j.org_id, 'u:' || j.user_id::text)
                                           || ' ' || j.concurrency_key))::integer, 0) < j.key_limit)
        group by j.user_id
        order by j.user_id < v_start, j.user_id
        limit v_window
      ) w;
      exit windows when v_owners is null;
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

-- 2. The idle wait: only for jobs a claim could take ---------------------------------------
--
-- Seconds until the earliest pending job of these types (null: any) is due (<= 0: due
-- now), leaving out jobs a full concurrency limit holds back (as many of the job's
-- user's, organization's or key's jobs running as the limit allows: the predicate of
-- ai_jobs_work_due_v1 over ai_jobs_running_by_scope, the claim's own rule), by the
-- database's clock; null when no such job is pending. A held-back job is started by the
-- worker whose running job ends, not by an idle invocation waiting for it.
create or replace function public.ai_jobs_next_due_v3(p_job_types text[] default null)
returns double precision
language plpgsql stable
set search_path = ''
as $$
declare
  v_running jsonb;
  v_at timestamptz;
begin
  if not exists (select 1 from public.ai_jobs j
                 where j.status = 'pending' and (p_job_types is null or j.job_type = any (p_job_types))) then
    return null;  -- the idle queue: one index probe
  end if;
  v_running := public.ai_jobs_running_by_scope();
  select j.run_at into v_at
  from public.ai_jobs j
  where j.status = 'pending'
    and (p_job_types is null or j.job_type = any (p_job_types))
    and (j.user_limit is null
         or coalesce((v_running ->> ('u:' || j.user_id::text))::integer, 0) < j.user_limit)
    and (j.org_limit is null or j.org_id is null
         or coalesce((v_running ->> ('o:' || j.org_id))::integer, 0) < j.org_limit)
    and (j.key_limit is null or j.concurrency_key is null
         or coalesce((v_running ->> ('k:' || coalesce('o:' || j.org_id, 'u:' || j.user_id::text)
                                     || ' ' || j.concurrency_key))::integer, 0) < j.key_limit)
  order by j.run_at
  limit 1;
  return extract(epoch from (v_at - now()))::double precision;
end
$$;

-- 3. Schedule ticks: the API's active-job cap, paused jobs included ------------------------
--
-- 20261130001300's function with ai_jobs_enqueue_many_v2 in place of v1 (each job's cap
-- counted over pending, running and paused jobs, under the per-user enqueue lock; a
-- repeated tick's idempotency key still returns its job at the cap). A refused tick is
-- skipped and kept in last_error, as before.
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
    v_result := public.ai_jobs_enqueue_many_v2(jsonb_build_array(v_job)) -> 0;  -- v1 before: cap without paused jobs
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

-- 4. Reaping: the owner's error does not name the worker -----------------------------------
--
-- 20261122000200's function; the message leaves out locked_by, which is logged instead.
-- The usual call (every claim) finds nothing expired and pays one index probe, as before.
create or replace function public.ai_jobs_reap_v1(p_limit integer default 100)
returns setof public.ai_jobs
language plpgsql volatile
set search_path = ''
as $$
declare
  r record;
begin
  for r in
    with expired as (
      select j.id, j.locked_by,
        case
          when j.cancel_requested_at is not null then 'cancelled'
          when j.attempts >= j.max_attempts then 'failed'
          else 'pending'
        end as next_status
      from public.ai_jobs j
      where j.status = 'running' and j.lease_expires_at < now()
      order by j.lease_expires_at
      limit greatest(coalesce(p_limit, 100), 1)
      for update skip locked
    )
    update public.ai_jobs j set
      status = e.next_status,
      locked_by = null,
      lease_expires_at = null,
      run_at = case when e.next_status = 'pending' then now() else j.run_at end,
      finished_at = case when e.next_status = 'pending' then null else now() end,
      error = case
        when e.next_status = 'cancelled' then j.error
        else jsonb_build_object(
          'code', 'lease_expired',
          'message', format('the worker stopped renewing its lease (attempt %s of %s)',
                            j.attempts, j.max_attempts),
          'retryable', e.next_status = 'pending')
      end
    from expired e
    where j.id = e.id
    returning j as job, e.locked_by as worker
  loop
    raise log 'ai_jobs: job % reaped (now %): worker % stopped renewing its lease (attempt % of %)',
      (r.job).id, (r.job).status, r.worker, (r.job).attempts, (r.job).max_attempts;
    return next r.job;
  end loop;
end
$$;

-- Privileges: service_role only ------------------------------------------------------------

revoke all on function public.ai_jobs_claim_v2(text, integer, integer, text[], uuid) from public, anon, authenticated;
grant execute on function public.ai_jobs_claim_v2(text, integer, integer, text[], uuid) to service_role;
revoke all on function public.ai_jobs_next_due_v3(text[]) from public, anon, authenticated;
grant execute on function public.ai_jobs_next_due_v3(text[]) to service_role;
revoke all on function public.ai_jobs_fire_schedule_v1(uuid, timestamptz, timestamptz, jsonb, jsonb)
  from public, anon, authenticated;
grant execute on function public.ai_jobs_fire_schedule_v1(uuid, timestamptz, timestamptz, jsonb, jsonb) to service_role;
revoke all on function public.ai_jobs_reap_v1(integer) from public, anon, authenticated;
grant execute on function public.ai_jobs_reap_v1(integer) to service_role;
