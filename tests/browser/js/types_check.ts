// Compiled with `tsc --noEmit --strict` by tests/browser/test_react_hook.py:
// the declarations describe the modules as an app would use them.
import {
  AiJobsError,
  createAiJobsClient,
  type Job,
  type JobStatus,
  type WatchMode,
} from "../../../public/ai-jobs";
import { useAiJob, type UseAiJob } from "../../../public/ai-jobs-react";

const client = createAiJobsClient({ baseUrl: "", getAccessToken: () => "token", pollInterval: 500 });

async function example(): Promise<void> {
  const job: Job<{ prompt: string }> = await client.createJob("ai.generate", { prompt: "hi" }, { idempotencyKey: "k" });
  const status: JobStatus = job.status;
  const page = await client.listJobs({ status: "completed", limit: 10 });
  const first: Job | undefined = page.jobs[0];
  const cursor: string | null = page.next_cursor;
  const stop: () => void = client.watchJob(job.id, {
    onUpdate: (j) => console.log(j.progress, j.progress_message),
    onMode: (mode: WatchMode) => console.log(mode),
  });
  stop();
  try {
    await client.cancelJob(job.id);
  } catch (error) {
    if (error instanceof AiJobsError) console.log(error.status, error.code, error.errors[0]?.field);
  }
  console.log(status, first, cursor);
  // @ts-expect-error: statuses are a closed set
  const wrong: JobStatus = "exploded";
  // @ts-expect-error: watchJob needs a job id
  client.watchJob();
  console.log(wrong);
}

function Component(): number {
  const state: UseAiJob<{ text: string }> = useAiJob<{ text: string }>("id", { client });
  const text: string | undefined = state.result?.text;
  console.log(text, state.message, state.status === "loading");
  return state.progress;
}

export { Component, example };
