// Type declarations for ai-jobs.js.

export type JobStatus = "pending" | "running" | "completed" | "failed" | "cancelled";

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

export declare class AiJobsError extends Error {
  status: number;
  code?: string;
  errors: FieldError[];
  retryAfter?: number;
}

/** Minimal shape of the supabase-js client this module uses. */
export interface SupabaseLike {
  auth?: { getSession(): Promise<{ data: { session: { access_token: string } | null } }> };
  channel(name: string): any;
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
  /** Backoff ceiling in ms while Realtime is down (default 15000). */
  maxPollInterval?: number;
  fetch?: typeof fetch;
}

export interface CreateJobOptions {
  /** 0 or lower (lower runs later); the API refuses more than 0. */
  priority?: number;
  /** Not before this time: at most 1 minute ago and 1 year ahead. */
  runAt?: Date | string;
  /** e.g. "decision:123": limits how many jobs sharing it run at once (per organization, else per user). */
  concurrencyKey?: string;
  idempotencyKey?: string;
  metadata?: Record<string, unknown>;
}

export type WatchMode = "realtime" | "polling" | "polling-fallback";

export interface WatchHandlers {
  onUpdate?(job: Job): void;
  onDone?(job: Job): void;
  onError?(error: unknown): void;
  onMode?(mode: WatchMode): void;
}

export interface AiJobsClient {
  createJob<I = Record<string, unknown>>(type: string, input?: I, options?: CreateJobOptions): Promise<Job<I>>;
  getJob(id: string): Promise<Job>;
  listJobs(filters?: { status?: JobStatus; type?: string; limit?: number; cursor?: string }): Promise<JobList>;
  listJobTypes(): Promise<{ job_types: JobTypeInfo[] }>;
  cancelJob(id: string): Promise<Job>;
  retryJob(id: string): Promise<Job>;
  deleteJob(id: string): Promise<null>;
  /** Follow a job until it ends; returns an unsubscribe function. */
  watchJob(id: string, handlers?: WatchHandlers): () => void;
  readJob(id: string): Promise<Job | null>;
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
export declare const watchJob: AiJobsClient["watchJob"];
