// useAiJob(jobId): a React hook over ai-jobs.js. React comes from the host app
// (its bundler or import map resolves "react"); this module bundles nothing.
import { useCallback, useEffect, useState } from "react";
import { cancelJob, retryJob, watchJob } from "./ai-jobs.js";

/**
 * @param {string|null|undefined} jobId
 * @param {{client?: ReturnType<import("./ai-jobs.js").createAiJobsClient>}} [options]
 */
export function useAiJob(jobId, options = {}) {
  const client = options.client || null;
  const [job, setJob] = useState(null);
  const [failure, setFailure] = useState(null);
  const [generation, setGeneration] = useState(0); // bumps after a retry to watch again

  useEffect(() => {
    if (!jobId) return undefined;
    setFailure(null);
    const watch = client ? client.watchJob : watchJob;
    return watch(jobId, { onUpdate: setJob, onError: setFailure });
  }, [jobId, client, generation]);

  const cancel = useCallback(() => (client ? client.cancelJob : cancelJob)(jobId).then((j) => {
    setJob(j);
    return j;
  }), [jobId, client]);

  const retry = useCallback(() => (client ? client.retryJob : retryJob)(jobId).then((j) => {
    setJob(j);
    setGeneration((n) => n + 1);
    return j;
  }), [jobId, client]);

  const current = job && job.id === jobId ? job : null;
  return {
    job: current,
    status: current ? current.status : jobId ? "loading" : "idle",
    progress: current ? current.progress : 0,
    message: current ? current.progress_message : null,
    result: current && current.status === "completed" ? current.result : null,
    error: (current && current.error) || failure,
    cancel,
    retry,
  };
}
