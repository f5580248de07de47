// Type declarations for ai-jobs.js.

export type JobStatus = "pending" | "running" | "completed" | "failed" | "cancelled" | "paused";

/** A parent job's children, kept up to date as they finish (at most every 0.5 s). */
export interface ChildCounts {
  total: number;
  done: number;
  failed: number;
  active: number;
  at?: string;
}

export interface JobError {
  code: string;
  message: string;
  retryable: boolean;
  [key: string]: unknown;
}

export interface Job<Input = Record<string, unknown>, Result = unknown> {
  id: string;
  user_id: string;
  job_type: string;
  status: JobStatus;
  priority: number;
  input: Input;
  result: Result | null;
  error: JobError | null;
  progress: number;
  progress_message: string | null;
  checkpoints: Record<string, unknown>;
  attempts: number;
  max_attempts: number;
  run_at: string;
  lease_expires_at: string | null;
  cancel_requested_at: string | null;
  idempotency_key: string | null;
  parent_id: string | null;
  metadata: Record<string, unknown>;
  usage: Record<string, unknown>;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  updated_at: string;
  /** The owner's organization (from the access token) when the job was created. */
  org_id: string | null;
  concurrency_key: string | null;
  /** Running-job limits checked when the job starts; null: no limit. */
  user_limit: number | null;
  org_limit: number | null;
  key_limit: number | null;
  /** Why a pending job has not started: "user_limit", "org_limit" or "key_limit" (that limit is full), or a reason the worker gave (e.g. "rate_limited"); null otherwise. */
  wait_reason: string | null;
  /** Claude cost estimated at create (US dollars); null for job types without Claude calls. */
  cost_estimate_usd: number | null;
  /** The job stops (error "budget_exceeded") rather than start a Claude call that could take usage.cost_usd over this. */
  cost_cap_usd: number | null;
  /** Live output of the streaming Claude call (the text so far), written with the progress writes. */
  stream: JobStream | null;
  /** Child jobs: the key and place this child was spawned under (null for a job you created). */
  spawn_key?: string | null;
  spawn_seq?: number | null;
  /** 0 for a job you created, 1 for its children, 2 for theirs. */
  depth?: number;
  /** While wait_reason is "waiting_for_children": what it waits for. */
  waiting?: { keys: string[] | null; max_failures: number } | null;
  /** A parent's children counts; null when it has spawned none. */
  children?: ChildCounts | null;
  /** A running job asked to pause: it stops at its next step and becomes "paused". */
  pause_requested_at?: string | null;
}

/** The row's snapshot of a streaming Claude call. */
export interface JobStream {
  /** New per Claude call: a retried call starts a new stream at offset 0. */
  id: string;
  seq: number;
  format: "text" | "json";
  text: string;
}

/** What onText/onPartial are told about the stream. */
export interface OutputInfo {
  stream: string;
  format: "text" | "json";
  /** The last delta of the call arrived (or the job completed). */
  done: boolean;
}

/** The columns readable through Supabase (every column but locked_by), comma-separated. */
export declare const JOB_COLUMNS: string;

export interface JobList {
  jobs: Job[];
  next_cursor: string | null;
}

export interface JobTypeInfo {
  type: string;
  description: string;
  max_attempts: number;
  input_schema: Record<string, unknown>;
  output_schema: Record<string, unknown>;
}

export interface FieldError {
  field: string;
  message: string;
  type: string;
}

/** A problem+json body (RFC 9457) as the API sends it. */
export interface Problem {
  type?: string;
  title?: string;
  detail?: string;
  code?: string;
  errors?: FieldError[];
  retryAfter?: number;
  [key: string]: unknown;
}

export declare class AiJobsError extends Error {
  constructor(status: number, problem?: Problem | null, options?: { cause?: unknown });
  /** HTTP status; 0 for a network failure or a Realtime problem. */
  status: number;
  code?: string;
  errors: FieldError[];
  retryAfter?: number;
}

/**
 * Minimal shape of the supabase-js client this module uses (a `SupabaseClient`
 * from @supabase/supabase-js 2 fits it, including one made with the `accessToken` option).
 */
export interface SupabaseLike {
  auth?: {
    getSession(): Promise<{ data: { session: { access_token: string } | null } }>;
    refreshSession?(): Promise<unknown>;
  };
  /** Realtime: the token for joins is refreshed with `setAuth()` after a refresh, a 401 or an expired-token close. */
  realtime?: { setAuth(token?: string | null): Promise<void> };
  channel(name: string, options?: any): any;
  getChannels?(): Array<{ topic: string }>;
  removeChannel(channel: any): unknown;
  from(table: string): any;
}

export interface ClientOptions {
  /** Where the API lives; "" (default) is the page's origin. */
  baseUrl?: string;
  /** The host app's supabase-js client: enables Realtime and RLS re-reads. */
  supabase?: SupabaseLike | null;
  /** The user's access token when there is no supabase client (local development). */
  getAccessToken?: () => Promise<string | null> | string | null;
  /** ms between polls without Realtime (default 1000). */
  pollInterval?: number;
  /** Backoff ceiling in ms for polls and read retries while Realtime is down (default 15000). */
  maxPollInterval?: number;
  /** ms before a read is abandoned and retried (default 10000). */
  readTimeout?: number;
  /**
   * ms after the join reply to treat the channel as live when the server sends no "Subscribed to
   * PostgreSQL" (default 10000) or, with statusVia "broadcast", no "Replication connection
   * established" (default 65000: the server closes the channel after a minute without it).
   */
  liveTimeout?: number;
  /**
   * Each watched job has one Realtime channel: its private topic `ai-jobs-live:<id>` (only the
   * owner may join; works with "Allow public access" off). "postgres_changes" (default): status
   * changes over Postgres Changes on that channel. "broadcast": the "status" messages on it, sent
   * by the database trigger that `select public.ai_jobs_status_broadcast_v1(true)` installs
   * (Supabase's recommendation at scale); the join asks for `broadcast.replication_ready` and the
   * job is read until the server says the replication connection is up. Those messages carry
   * status, progress, progress_message, attempts, cancel_requested_at, wait_reason, updated_at and
   * finished_at: other columns (children, started_at, checkpoints, usage…) are as of the last read.
   */
  statusVia?: "postgres_changes" | "broadcast";
  fetch?: typeof fetch;
}

export interface CreateJobOptions {
  /** 0 or lower (lower runs later); the API refuses more than 0. */
  priority?: number;
  /** Not before this time: at most 1 minute ago and 1 year ahead. */
  runAt?: Date | string;
  /** e.g. "decision:123": limits how many jobs sharing it run at once (per organization, else per user). */
  concurrencyKey?: string;
  /** Sent as the Idempotency-Key header when it is printable ASCII, else as the body's idempotency_key. */
  idempotencyKey?: string;
  metadata?: Record<string, unknown>;
}

/**
 * connecting: joining Realtime (reads at pollInterval meanwhile); realtime: changes are pushed;
 * polling: no supabase client; polling-fallback: Realtime is down, reads back off until it is back.
 */
export type WatchMode = "connecting" | "realtime" | "polling" | "polling-fallback";

export interface WatchHandlers {
  /** A newer row (ordered by updated_at; never an older one after a newer one). */
  onUpdate?(job: Job): void;
  /** The job reached completed, failed or cancelled; the watch has stopped. */
  onDone?(job: Job): void;
  /** The job was deleted (or is no longer readable by this user); the watch has stopped. */
  onGone?(jobId: string): void;
  /**
   * A problem being retried, or (before the watch stops) a read the server refused for good.
   * `error.code`: the server's code for a failed read (e.g. PostgREST's "PGRST303"), or
   * "network_error" (no request made); "realtime_error" (a join refused or failed);
   * "realtime_closed" (the server closed the channel; the watch rejoins);
   * "realtime_topic_in_use" (the supabase client already has a channel of the app's own on
   * `ai-jobs-live:<id>`: the job is read instead of pushed; reported once).
   */
  onError?(error: AiJobsError): void;
  /** Reads or Realtime work again after an onError. */
  onResume?(): void;
  onMode?(mode: WatchMode): void;
  /**
   * Live Claude output: the whole text so far each time it grows (from the row's snapshot,
   * then deltas on the job's private channel `ai-jobs-live:<id>`, without gaps or duplicates).
   */
  onText?(text: string, info: OutputInfo): void;
  /** Structured output (ai.extract, ai.match): the JSON so far, closed so it parses. */
  onPartial?(value: unknown, info: OutputInfo): void;
}

export interface AiJobsClient {
  createJob<I = Record<string, unknown>>(type: string, input?: I, options?: CreateJobOptions): Promise<Job<I>>;
  getJob(id: string): Promise<Job>;
  listJobs(filters?: { status?: JobStatus; type?: string; limit?: number; cursor?: string }): Promise<JobList>;
  listJobTypes(): Promise<{ job_types: JobTypeInfo[] }>;
  cancelJob(id: string): Promise<Job>;
  retryJob(id: string): Promise<Job>;
  deleteJob(id: string): Promise<null>;
  /** A running job stops at its next step and becomes paused (children too); 409 when finished. */
  pauseJob(id: string): Promise<Job>;
  /** A paused job (and its paused children) becomes pending again. */
  resumeJob(id: string): Promise<Job>;
  /** A job's children, newest first, a page at a time (pass next_cursor back as cursor). */
  listChildren(id: string, options?: { limit?: number; cursor?: string }): Promise<JobList>;
  /** Follow a job until it ends; returns an unsubscribe function. */
  watchJob(id: string, handlers?: WatchHandlers): () => void;
  /** The row through Supabase (RLS) or the API; null when it does not exist for this user. */
  readJob(id: string, signal?: AbortSignal): Promise<Job | null>;
}

export declare function createAiJobsClient(options?: ClientOptions): AiJobsClient;
export declare function configure(options: ClientOptions): AiJobsClient;
export declare function timeKey(timestamp: string | null | undefined): number;
export declare function isTerminal(job: Job | null | undefined): boolean;

export declare const createJob: AiJobsClient["createJob"];
export declare const getJob: AiJobsClient["getJob"];
export declare const listJobs: AiJobsClient["listJobs"];
export declare const listJobTypes: AiJobsClient["listJobTypes"];
export declare const cancelJob: AiJobsClient["cancelJob"];
export declare const retryJob: AiJobsClient["retryJob"];
export declare const deleteJob: AiJobsClient["deleteJob"];
export declare const pauseJob: AiJobsClient["pauseJob"];
export declare const resumeJob: AiJobsClient["resumeJob"];
export declare const listChildren: AiJobsClient["listChildren"];
export declare const watchJob: AiJobsClient["watchJob"];
