-- ai-jobs 1/2: the ai_jobs table, its invariants, indexes, RLS and Realtime.
-- Idempotent: safe to apply again on a database that already has it.

create table if not exists public.ai_jobs (
  id                  uuid primary key default gen_random_uuid(),
  user_id             uuid not null references auth.users (id) on delete cascade,
  job_type            text not null,
  status              text not null default 'pending',
  priority            integer not null default 0,
  input               jsonb not null default '{}'::jsonb,
  result              jsonb,
  error               jsonb,
  progress            smallint not null default 0,
  progress_message    text,
  checkpoints         jsonb not null default '{}'::jsonb,
  attempts            integer not null default 0,
  max_attempts        integer not null default 3,
  run_at              timestamptz not null default now(),
  locked_by           text,
  lease_expires_at    timestamptz,
  cancel_requested_at timestamptz,
  idempotency_key     text,
  parent_id           uuid references public.ai_jobs (id) on delete set null,
  metadata            jsonb not null default '{}'::jsonb,
  usage               jsonb not null default '{}'::jsonb,
  created_at          timestamptz not null default now(),
  started_at          timestamptz,
  finished_at         timestamptz,
  updated_at          timestamptz not null default now(),

  constraint ai_jobs_status_valid
    check (status in ('pending', 'running', 'completed', 'failed', 'cancelled')),
  constraint ai_jobs_job_type_format
    check (job_type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$' and length(job_type) <= 100),
  constraint ai_jobs_priority_range check (priority between -1000 and 1000),
  constraint ai_jobs_input_object check (jsonb_typeof(input) = 'object'),
  constraint ai_jobs_checkpoints_object check (jsonb_typeof(checkpoints) = 'object'),
  constraint ai_jobs_metadata_object check (jsonb_typeof(metadata) = 'object'),
  constraint ai_jobs_usage_object check (jsonb_typeof(usage) = 'object'),
  constraint ai_jobs_progress_range check (progress between 0 and 100),
  constraint ai_jobs_progress_message_length check (length(progress_message) <= 1000),
  constraint ai_jobs_attempts_range
    check (max_attempts between 1 and 100 and attempts between 0 and max_attempts),
  constraint ai_jobs_idempotency_key_length
    check (length(idempotency_key) between 1 and 255),
  constraint ai_jobs_not_own_parent check (parent_id <> id),
  -- error is {code: text, message: text, retryable: bool, ...}
  constraint ai_jobs_error_shape check (
    error is null or (
      jsonb_typeof(error) = 'object'
      and jsonb_typeof(error -> 'code') = 'string'
      and jsonb_typeof(error -> 'message') = 'string'
      and jsonb_typeof(error -> 'retryable') = 'boolean'
    )
  ),
  -- A lease exists exactly while the job runs.
  constraint ai_jobs_lease_iff_running check (
    case when status = 'running'
      then locked_by is not null and lease_expires_at is not null and started_at is not null
      else locked_by is null and lease_expires_at is null
    end
  ),
  -- finished_at is set exactly for terminal jobs.
  constraint ai_jobs_finished_iff_terminal
    check ((finished_at is not null) = (status in ('completed', 'failed', 'cancelled'))),
  constraint ai_jobs_completed_has_result check (status <> 'completed' or result is not null),
  constraint ai_jobs_failed_has_error check (status <> 'failed' or error is not null),
  -- A pending job with a cancel request is cancelled at once, never left pending.
  constraint ai_jobs_no_pending_cancel check (status <> 'pending' or cancel_requested_at is null),
  constraint ai_jobs_idempotency_unique unique (user_id, idempotency_key)
);

comment on table public.ai_jobs is
  'Background AI jobs. Owners read their rows (RLS); all writes go through the ai_jobs_*_v1 functions (service_role).';
comment on column public.ai_jobs.checkpoints is
  'Completed step results keyed by step name; a step present here is never re-run.';
comment on column public.ai_jobs.usage is
  'Summed token usage and estimated cost (input_tokens, output_tokens, cache_*_input_tokens, cost_usd, requests).';

-- Claim: pending jobs by priority then due time (partial, so finished rows cost nothing).
create index if not exists ai_jobs_claim_idx
  on public.ai_jobs (priority desc, run_at, id) where status = 'pending';
-- Owner listing, newest first, keyset-paginated; also covers the user_id foreign key.
create index if not exists ai_jobs_owner_idx
  on public.ai_jobs (user_id, created_at desc, id desc);
-- Per-user active-job cap.
create index if not exists ai_jobs_owner_active_idx
  on public.ai_jobs (user_id) where status in ('pending', 'running');
-- Sweeper: expired leases.
create index if not exists ai_jobs_lease_idx
  on public.ai_jobs (lease_expires_at) where status = 'running';
-- Retention purge and 24 h metrics.
create index if not exists ai_jobs_finished_idx
  on public.ai_jobs (finished_at) where status in ('completed', 'failed', 'cancelled');
-- parent_id foreign key.
create index if not exists ai_jobs_parent_idx on public.ai_jobs (parent_id);

-- updated_at moves on every write, even several in one transaction, so
-- browsers can discard stale Realtime events by comparing it.
create or replace function public.ai_jobs_touch_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := greatest(clock_timestamp(), old.updated_at + interval '1 microsecond');
  return new;
end
$$;

create or replace trigger ai_jobs_touch_updated_at
  before update on public.ai_jobs
  for each row execute function public.ai_jobs_touch_updated_at();

-- Row level security: owners may read their own rows; nobody writes directly.
alter table public.ai_jobs enable row level security;

drop policy if exists ai_jobs_owner_select on public.ai_jobs;
create policy ai_jobs_owner_select on public.ai_jobs
  for select to authenticated
  using (user_id = (select auth.uid()));

-- Supabase grants ALL on new public tables to anon and authenticated; take it back.
revoke all on table public.ai_jobs from public, anon, authenticated;
grant select on table public.ai_jobs to authenticated;
grant all on table public.ai_jobs to service_role;

-- Realtime: add the table to the publication Supabase created, once.
do $realtime$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    raise warning 'publication supabase_realtime is missing; ai_jobs will not stream over Realtime';
  elsif not exists (
    select 1 from pg_publication_tables
    where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'ai_jobs'
  ) then
    alter publication supabase_realtime add table public.ai_jobs;
  end if;
end
$realtime$;
