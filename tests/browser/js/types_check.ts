// Compiled with `tsc --noEmit --strict` by tests/browser/test_react_hook.py:
// the declarations describe the modules as an app would use them.
import {
  AiJobsError,
  createAiJobsClient,
  listChildren,
  pauseJob,
  resumeJob,
  type Job,
  type JobList,
  type JobStatus,
  type JobStream,
  type OutputInfo,
  type SupabaseLike,
  type WatchMode,
} from "../../../public/ai-jobs";
import { useAiJob, type UseAiJob } from "../../../public/ai-jobs-react";

const client = createAiJobsClient({ baseUrl: "", getAccessToken: () => "token", pollInterval: 500 });

// supabase_check.ts checks that real supabase-js clients fit `supabase`
declare const supabase: SupabaseLike;
const realtimeClient = createAiJobsClient({ supabase, readTimeout: 5000, liveTimeout: 8000 });
const sessionClient = createAiJobsClient({ supabase: null });

async function example(): Promise<void> {
  const job: Job<{ prompt: string }> = await client.createJob("ai.generate", { prompt: "hi" }, { idempotencyKey: "k" });
  const status: JobStatus = job.status;
  const page = await client.listJobs({ status: "completed", limit: 10 });
  const first: Job | undefined = page.jobs[0];
  const cursor: string | null = page.next_cursor;
  const stop: () => void = realtimeClient.watchJob(job.id, {
    onUpdate: (j) => console.log(j.progress, j.progress_message),
    onDone: (j) => console.log(j.status, j.result),
    onGone: (id: string) => console.log("deleted", id),
    onError: (error) => console.log(error.status, error.code),
    onResume: () => console.log("back"),
    onMode: (mode: WatchMode) => console.log(mode === "connecting" || mode === "realtime"),
  });
  stop();
  try {
    await client.cancelJob(job.id);
    const paused: Job = await client.pauseJob(job.id);
    const resumed: Job = await pauseJob(job.id).then(() => resumeJob(job.id));
    const kids = await client.listChildren(job.id, { limit: 20, cursor: page.next_cursor ?? undefined });
    const more: JobList = await listChildren(job.id);
    console.log(paused.status, resumed.status, kids.jobs.length, kids.next_cursor, more.jobs[0]?.parent_id);
  } catch (error) {
    if (error instanceof AiJobsError) console.log(error.status, error.code, error.errors[0]?.field, error.retryAfter);
  }
  const made = new AiJobsError(404, { code: "job_not_found", detail: "job not found" });
  const bare = new AiJobsError(0);
  const row: Job | null = await sessionClient.readJob(job.id);
  console.log(status, first, cursor, made.message, bare.status, row);
  // @ts-expect-error: statuses are a closed set
  const wrong: JobStatus = "exploded";
  // @ts-expect-error: watchJob needs a job id
  client.watchJob();
  // @ts-expect-error: the status is a number
  new AiJobsError("404");
  console.log(wrong);
}

function liveOutput(): () => void {
  // live Claude output, and status over Broadcast
  const broadcastClient = createAiJobsClient({ statusVia: "broadcast" });
  return broadcastClient.watchJob("id", {
    onText(text: string, info: OutputInfo) {
      const done: boolean = info.done;
      const format: "text" | "json" = info.format;
      console.log(text.length, info.stream, done, format);
    },
    onPartial(value: unknown) {
      console.log(value);
    },
    onUpdate(job: Job) {
      const snapshot: JobStream | null = job.stream;
      console.log(snapshot?.text, snapshot?.seq);
    },
  });
}

function Component(): number {
  const state: UseAiJob<{ text: string }> = useAiJob<{ text: string }>("id", { client, output: true });
  const streamed: string | null = state.text;
  const partial: unknown = state.partial;
  console.log(streamed, partial);
  // @ts-expect-error: statusVia is a closed set
  createAiJobsClient({ statusVia: "sse" });
  const text: string | undefined = state.result?.text;
  const gone: boolean = state.status === "gone";
  void state.cancel().then((job: Job | null) => console.log(job?.status));
  console.log(text, state.message, state.status === "loading", gone);
  return state.progress;
}

export { Component, example, liveOutput };
