import type { AiJobsClient, Job, JobError, JobStatus } from "./ai-jobs";

export interface UseAiJob<Result = unknown> {
  job: Job<Record<string, unknown>, Result> | null;
  status: JobStatus | "loading" | "idle";
  progress: number;
  message: string | null;
  result: Result | null;
  error: JobError | unknown | null;
  cancel(): Promise<Job>;
  retry(): Promise<Job>;
}

export declare function useAiJob<Result = unknown>(
  jobId: string | null | undefined,
  options?: { client?: AiJobsClient },
): UseAiJob<Result>;
