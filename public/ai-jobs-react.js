// useAiJob(jobId): a React hook over ai-jobs.js. React comes from the host app
// (its bundler or import map resolves "react"); this module bundles nothing.
import { useCallback, useEffect, useRef, useState } from "react";
import { cancelJob, retryJob, timeKey, watchJob } from "./ai-jobs.js";

const EMPTY = { job: null, failure: null, gone: false, text: null, partial: undefined };

/**
 * @param {string|null|undefined} jobId
 * @param {{client?: ReturnType<import("./ai-jobs.js").createAiJobsClient>, output?: boolean}} [options]
 *   output (default true): follow the live Claude output (`text`, `partial`) that the job's one
 *   private channel carries; false leaves them unset
 */
export function useAiJob(givenId, options = {}) {
  // Postgres prints uuids in lower case: the rows' ids are compared with that form
  const jobId = typeof givenId === "string" ? givenId.toLowerCase() : givenId;
  const client = options.client || null;
  const output = options.output !== false;
  const [state, setState] = useState({ ...EMPTY, jobId });
  const [generation, setGeneration] = useState(0); // bumps after a retry to watch again
  const latest = useRef(null); // the newest row seen for jobId, from events or cancel()/retry()

  // Events and cancel()/retry() responses go through the same updated_at ordering:
  // a response older than an event already shown never moves the state back.
  const accept = useCallback((job) => {
    if (!job || job.id !== jobId) return false;
    const known = latest.current;
    if (known && known.id === jobId && timeKey(job.updated_at) < timeKey(known.updated_at)) return false;
    latest.current = job;
    setState((s) => ({ ...s, jobId, job, failure: null, gone: false }));
    return true;
  }, [jobId]);

  useEffect(() => {
    if (!latest.current || latest.current.id !== jobId) latest.current = null;
    setState((s) => (s.jobId === jobId ? { ...s, failure: null } : { ...EMPTY, jobId }));
    if (!jobId) return undefined;
    const watch = client ? client.watchJob : watchJob;
    return watch(jobId, {
      onUpdate: accept,
      onError: (failure) => setState((s) => (s.jobId === jobId ? { ...s, failure } : s)),
      onResume: () => setState((s) => (s.jobId === jobId ? { ...s, failure: null } : s)),
      onGone: () => setState((s) => (s.jobId === jobId ? { ...s, gone: true, failure: null } : s)),
      ...(output ? {
        onText: (text) => setState((s) => (s.jobId === jobId ? { ...s, text } : s)),
        onPartial: (partial) => setState((s) => (s.jobId === jobId ? { ...s, partial } : s)),
      } : {}),
    });
  }, [jobId, client, generation, accept, output]);

  const act = useCallback((call, again) => call(jobId).then((job) => {
    const shown = accept(job);
    if (shown && again) setGeneration((n) => n + 1); // the old watch ended with the old attempt
    return job;
  }, (failure) => {
    // resolve, never reject: a button's onClick does not catch
    setState((s) => (s.jobId === jobId ? { ...s, failure } : s));
    return null;
  }), [jobId, accept]);

  const cancel = useCallback(() => act(client ? client.cancelJob : cancelJob, false), [act, client]);
  const retry = useCallback(() => act(client ? client.retryJob : retryJob, true), [act, client]);

  const current = state.jobId === jobId && state.job && state.job.id === jobId ? state.job : null;
  const gone = state.jobId === jobId && state.gone;
  const failure = state.jobId === jobId ? state.failure : null;
  return {
    job: current,
    status: gone ? "gone" : current ? current.status : jobId ? "loading" : "idle",
    progress: current ? current.progress : 0,
    message: current ? current.progress_message : null,
    result: current && current.status === "completed" ? current.result : null,
    text: state.jobId === jobId ? state.text : null,
    partial: state.jobId === jobId ? state.partial : undefined,
    error: (current && current.error) || failure,
    // a parent job's children: {total, done, failed, active}; null when it has spawned none
    children: current && current.children ? {
      total: current.children.total, done: current.children.done,
      failed: current.children.failed, active: current.children.active,
    } : null,
    cancel,
    retry,
  };
}
