// ai-jobs browser client: create, watch and manage background jobs.
// Dependency-free ES module. The host app passes its own @supabase/supabase-js
// client for live updates over Realtime; without one (local development) the
// client polls GET /api/jobs/{id}.

const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/**
 * The columns a signed-in user may read from public.ai_jobs (RLS, column
 * privileges): all but locked_by, so `select("*")` is refused and reads name them.
 */
export const JOB_COLUMNS = [
  "id", "user_id", "job_type", "status", "priority", "input", "result", "error", "progress",
  "progress_message", "checkpoints", "attempts", "max_attempts", "run_at", "lease_expires_at",
  "cancel_requested_at", "idempotency_key", "parent_id", "metadata", "usage", "created_at",
  "started_at", "finished_at", "updated_at", "org_id", "concurrency_key", "user_limit", "org_limit",
  "key_limit", "wait_reason", "cost_estimate_usd", "cost_cap_usd",
].join(",");

/** Error from the ai-jobs API, carrying the problem+json body. */
export class AiJobsError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.name = "AiJobsError";
    this.status = status;
    this.code = problem && problem.code;
    this.errors = (problem && problem.errors) || [];
    this.retryAfter = problem && problem.retryAfter;
  }
}

/** Sortable key of a Postgres timestamp string, to microseconds. */
export function timeKey(value) {
  if (!value) return -Infinity;
  const match = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}(?::?\d{2})?)?$/.exec(value);
  if (!match) return Date.parse(value) * 1000;
  const [, date, time, fraction = "", zone = "Z"] = match;
  const offset = zone === "Z" ? "Z" : zone.length === 3 ? `${zone}:00` : zone.includes(":") ? zone : `${zone.slice(0, 3)}:${zone.slice(3)}`;
  const millis = Date.parse(`${date}T${time}${offset}`);
  return millis * 1000 + Number((fraction + "000000").slice(0, 6));
}

export function isTerminal(job) {
  return Boolean(job) && TERMINAL.has(job.status);
}

/**
 * Create a client.
 * @param {object} options
 * @param {string} [options.baseUrl]  where the API lives ("" = same origin)
 * @param {object} [options.supabase]  the host app's supabase-js client (enables Realtime)
 * @param {() => Promise<string|null>|string|null} [options.getAccessToken]  user token when there is no supabase client
 * @param {number} [options.pollInterval]  ms between polls without Realtime (default 1000)
 * @param {number} [options.maxPollInterval]  backoff ceiling in ms (default 15000)
 * @param {typeof fetch} [options.fetch]
 */
export function createAiJobsClient(options = {}) {
  const baseUrl = (options.baseUrl || "").replace(/\/$/, "");
  const supabase = options.supabase || null;
  const fetchImpl = options.fetch || globalThis.fetch.bind(globalThis);
  const pollInterval = options.pollInterval ?? 1000;
  const maxPollInterval = options.maxPollInterval ?? 15000;

  async function accessToken() {
    if (options.getAccessToken) return await options.getAccessToken();
    if (supabase && supabase.auth) {
      const { data } = await supabase.auth.getSession();
      return (data && data.session && data.session.access_token) || null;
    }
    return null;
  }

  async function api(method, path, body, headers = {}) {
    const token = await accessToken();
    const response = await fetchImpl(`${baseUrl}${path}`, {
      method,
      headers: {
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...headers,
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    if (response.status === 204) return null;
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const problem = data || {};
      problem.retryAfter = Number(response.headers.get("retry-after")) || undefined;
      throw new AiJobsError(response.status, problem);
    }
    return data;
  }

  /** POST /api/jobs. options: {priority (0 or lower), runAt, idempotencyKey, concurrencyKey, metadata} */
  function createJob(type, input = {}, opts = {}) {
    const body = { type, input };
    if (opts.priority !== undefined) body.priority = opts.priority;
    if (opts.concurrencyKey !== undefined) body.concurrency_key = opts.concurrencyKey;
    if (opts.runAt !== undefined) body.run_at = opts.runAt instanceof Date ? opts.runAt.toISOString() : opts.runAt;
    if (opts.metadata !== undefined) body.metadata = opts.metadata;
    const headers = opts.idempotencyKey ? { "idempotency-key": opts.idempotencyKey } : {};
    return api("POST", "/api/jobs", body, headers);
  }

  const getJob = (id) => api("GET", `/api/jobs/${encodeURIComponent(id)}`);
  const cancelJob = (id) => api("POST", `/api/jobs/${encodeURIComponent(id)}/cancel`);
  const retryJob = (id) => api("POST", `/api/jobs/${encodeURIComponent(id)}/retry`);
  const deleteJob = (id) => api("DELETE", `/api/jobs/${encodeURIComponent(id)}`);
  const listJobTypes = () => api("GET", "/api/job-types");

  /** GET /api/jobs. filters: {status, type, limit, cursor} → {jobs, next_cursor} */
  function listJobs(filters = {}) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) {
      if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
    }
    const query = params.toString();
    return api("GET", `/api/jobs${query ? `?${query}` : ""}`);
  }

  /** Re-read the row: through Supabase (RLS) when there is a client, else the API. */
  async function readJob(id) {
    if (supabase) {
      const { data, error } = await supabase.from("ai_jobs").select(JOB_COLUMNS).eq("id", id).maybeSingle();
      if (error) throw error;
      return data;
    }
    return getJob(id);
  }

  /**
   * Follow one job until it ends. Returns an unsubscribe function.
   * handlers: {onUpdate(job), onDone(job), onError(error), onMode(mode)}
   * With a supabase client: postgres_changes on public.ai_jobs filtered id=eq.<id>,
   * a re-read after every SUBSCRIBED (Realtime keeps no queue) and when a hidden
   * tab becomes visible, polling with backoff while the channel is down.
   */
  function watchJob(jobId, handlers = {}) {
    const { onUpdate, onDone, onError, onMode } = handlers;
    let latest = null;
    let stopped = false;
    let channel = null;
    let pollTimer = null;
    let pollDelay = pollInterval;
    let mode = null;

    const setMode = (next) => {
      if (mode !== next) {
        mode = next;
        onMode && onMode(next);
      }
    };

    function stop() {
      if (stopped) return;
      stopped = true;
      clearTimeout(pollTimer);
      pollTimer = null;
      if (typeof document !== "undefined") document.removeEventListener("visibilitychange", onVisible);
      if (channel && supabase) {
        const c = channel;
        channel = null;
        supabase.removeChannel(c);
      }
    }

    function apply(job) {
      if (stopped || !job || job.id !== jobId) return;
      if (latest && timeKey(job.updated_at) <= timeKey(latest.updated_at)) return; // stale or duplicate
      latest = job;
      onUpdate && onUpdate(job);
      if (isTerminal(job)) {
        stop();
        onDone && onDone(job);
      }
    }

    function fail(error) {
      onError && onError(error);
    }

    async function reread() {
      try {
        const job = await readJob(jobId);
        if (job === null) {
          fail(new AiJobsError(404, { code: "job_not_found", detail: "job not found" }));
          stop();
          return;
        }
        apply(job);
        pollDelay = mode === "polling-fallback" ? Math.min(pollDelay * 2, maxPollInterval) : pollInterval;
      } catch (error) {
        if (error instanceof AiJobsError && error.status === 404) {
          fail(error);
          stop();
          return;
        }
        pollDelay = Math.min(pollDelay * 2, maxPollInterval);
        fail(error);
      }
    }

    function schedulePoll() {
      clearTimeout(pollTimer);
      if (stopped) return;
      pollTimer = setTimeout(async () => {
        pollTimer = null;
        await reread();
        if (!stopped && (mode === "polling" || mode === "polling-fallback")) schedulePoll();
      }, pollDelay);
    }

    function startPolling(kind) {
      if (stopped || mode === kind) return;
      setMode(kind);
      pollDelay = pollInterval;
      schedulePoll();
    }

    function onVisible() {
      if (typeof document !== "undefined" && document.visibilityState === "visible") reread();
    }

    if (typeof document !== "undefined") document.addEventListener("visibilitychange", onVisible);

    if (!supabase) {
      setMode("polling");
      reread().then(() => schedulePoll());
      return stop;
    }

    async function subscribe() {
      // Make sure the join carries the user's token, not just the anon key:
      // Realtime authorizes every change against the SELECT policy as that user.
      try {
        if (supabase.realtime && typeof supabase.realtime.setAuth === "function") await supabase.realtime.setAuth();
      } catch (error) {
        fail(error);
      }
      if (stopped) return;
      channel = supabase
        .channel(`ai-jobs:${jobId}`)
        .on("postgres_changes", { event: "*", schema: "public", table: "ai_jobs", filter: `id=eq.${jobId}` }, (payload) => {
          if (payload.eventType === "DELETE") {
            fail(new AiJobsError(404, { code: "job_deleted", detail: "job was deleted" }));
            stop();
            return;
          }
          apply(payload.new);
        })
        .subscribe((status, error) => {
          if (stopped) return;
          if (status === "SUBSCRIBED") {
            clearTimeout(pollTimer);
            pollTimer = null;
            setMode("realtime");
            reread(); // anything that changed before the subscription went live
          } else if (status === "CHANNEL_ERROR" || status === "TIMED_OUT" || status === "CLOSED") {
            if (error) fail(error);
            startPolling("polling-fallback"); // realtime-js keeps rejoining; SUBSCRIBED ends this
          }
        });
    }

    subscribe();
    return stop;
  }

  return { createJob, getJob, listJobs, listJobTypes, cancelJob, retryJob, deleteJob, watchJob, readJob };
}

// A default client for apps with one configuration: configure() once, then use
// the named functions.
let defaultClient = null;

export function configure(options) {
  defaultClient = createAiJobsClient(options);
  return defaultClient;
}

function client() {
  if (!defaultClient) defaultClient = createAiJobsClient();
  return defaultClient;
}

export const createJob = (...args) => client().createJob(...args);
export const getJob = (...args) => client().getJob(...args);
export const listJobs = (...args) => client().listJobs(...args);
export const listJobTypes = (...args) => client().listJobTypes(...args);
export const cancelJob = (...args) => client().cancelJob(...args);
export const retryJob = (...args) => client().retryJob(...args);
export const deleteJob = (...args) => client().deleteJob(...args);
export const watchJob = (...args) => client().watchJob(...args);
