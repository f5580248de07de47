import type { AiJobsClient, AiJobsError, ChildCounts, Job, JobError, JobStatus } from "./ai-jobs.js";

export interface UseAiJob<Result = unknown> {
  job: Job<Record<string, unknown>, Result> | null;
  /** "gone": the job was deleted while watched. */
  status: JobStatus | "loading" | "idle" | "gone";
  progress: number;
  message: string | null;
  result: Result | null;
  /** The streaming Claude call's text so far (live output); null before any. Equals the final text at the end. */
  text: string | null;
  /** Structured output's JSON so far (ai.extract, ai.match), closed so it parses; undefined before any. */
  partial: unknown;
  /** The job's own error, else the last watch/cancel/retry problem (cleared once updates resume). */
  error: JobError | AiJobsError | null;
  /** A parent job's children counts (e.g. 37 of 200 done); null when it has spawned none. */
  children: Omit<ChildCounts, "at"> | null;
  /** Resolves with the job, or null when the request failed (then `error` says why). */
  cancel(): Promise<Job | null>;
  retry(): Promise<Job | null>;
}

export declare function useAiJob<Result = unknown>(
  jobId: string | null | undefined,
  /** output (default true): follow the live Claude output (`text`, `partial`); false leaves them unset. */
  options?: { client?: AiJobsClient; output?: boolean },
): UseAiJob<Result>;
