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
  locked_by: string | null;
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
}

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
  priority?: number;
  runAt?: Date | string;
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
