// ai-jobs browser client: create, watch and manage background jobs.
// Dependency-free ES module. The host app passes its own @supabase/supabase-js
// client for live updates over Realtime; without one (local development) the
// client polls GET /api/jobs/{id}.
//
// Realtime facts this file is built on (realtime-js 2.119 RealtimeChannel.ts /
// RealtimeClient.ts, @supabase/phoenix channel.js, supabase/realtime
// realtime_channel.ex and apply_rls.sql):
// - the join reply (SUBSCRIBED) can come before the Postgres subscription is
//   live; the server then pushes a `system` message ("Subscribed to PostgreSQL").
//   Only that message means changes are flowing, so the reconciling read waits for it;
// - DELETE events are not RLS-filtered and carry only the primary key;
// - rows over 1 MB arrive without their large columns, changed or not, and `errors`
//   holds a 413: such a row is read;
// - an UPDATE leaves out unchanged TOASTed values (stored out of line, over ~2 kB):
//   wal2json skips them and apply_rls.sql can only take them from the old tuple, which
//   holds just the primary key under the default replica identity. Missing keys are
//   filled from the last full row, once a read that started at or after the live moment
//   has answered (before that the last row may predate a change the server dropped);
// - an expired token closes the channel (system error, then phx_close) and
//   realtime-js never rejoins a closed channel: we do, with a fresh token;
// - supabase.channel(topic) returns an existing channel, and .on() throws after
//   subscribe(): one channel per job per supabase client, shared by its watchers
//   (RealtimeClient.ts channel(), RealtimeChannel.ts on()). A channel the app made on
//   the same topic cannot be joined or extended: the watch reports it and reads; an app
//   that asks for the topic after the watch gets the watch's channel, which the watch then
//   leaves to it when it stops;
// - a project with "Allow public access" off refuses every non-private join
//   ("PrivateOnly"), and a private join is authorized by the SELECT policies on
//   realtime.messages (ours: the job's owner, topic `ai-jobs-live:<id>` exactly);
//   postgres_changes work on a private channel as on a public one.
// - Broadcast from Database (statusVia "broadcast") is streamed by the tenant's replication
//   connection, which the server starts asynchronously and which creates a TEMPORARY slot:
//   a message sent before it is up is never delivered, and the join reply does not wait
//   for it (tenants/connect.ex, replication_connection.ex). A join with
//   config.broadcast.replication_ready gets a `system` ok ("Replication connection
//   established") once it is up, or is shut down after a minute (realtime_channel.ex
//   handle_info(:notify_replication_ready); realtime-js RealtimeChannelOptions).
// So each watched job has ONE channel: the private topic `ai-jobs-live:<id>`
// (config.private: true), carrying job status (postgres_changes, or with statusVia
// "broadcast" the "status" events the database trigger sends) and the live Claude
// output (issue 14): the worker broadcasts coalesced text deltas {job, stream, seq,
// offset, delta, format, done, partial?} (event "output"). The row's `stream` column
// holds the text so far; deltas are applied by `offset` (UTF-16 units = JS string
// indices): overlap is dropped, a gap is filled by re-reading the row. Deltas reach
// every watcher of the job; they are used only when one asked for output.

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
// A channel live this long resets the rejoin backoff: a server that shuts the channel soon
// after each join (e.g. "Too many messages per second") is not rejoined every 250 ms.
const LIVE_STABLE_MS = 30000;

/**
 * The columns a signed-in user may read from public.ai_jobs (RLS, column
 * privileges): all but locked_by, so `select("*")` is refused and reads name them.
 */
export const JOB_COLUMNS = [
  "id", "user_id", "job_type", "status", "priority", "input", "result", "error", "progress",
  "progress_message", "checkpoints", "attempts", "max_attempts", "run_at", "lease_expires_at",
  "cancel_requested_at", "idempotency_key", "parent_id", "metadata", "usage", "created_at",
  "started_at", "finished_at", "updated_at", "org_id", "concurrency_key", "user_limit", "org_limit",
  "key_limit", "wait_reason", "cost_estimate_usd", "cost_cap_usd", "stream",
  "spawn_key", "spawn_seq", "depth", "waiting", "children", "pause_requested_at",
].join(",");
const COLUMN_NAMES = JOB_COLUMNS.split(",");

/** Error from the ai-jobs API, carrying the problem+json body. */
export class AiJobsError extends Error {
  constructor(status, problem, options) {
    super((problem && (problem.detail || problem.title || problem.message)) || `HTTP ${status}`, options);
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

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Transient read failures worth retrying: network (status 0), timeouts, rate limits, 5xx, auth. */
function retryable(error) {
  const status = error && typeof error.status === "number" ? error.status : 0;
  return status === 0 || status === 401 || status === 408 || status === 429 || status >= 500;
}

function authFailure(error) {
  return Boolean(error) && (error.status === 401 || error.code === "PGRST301" || error.code === "PGRST303");
}

/** Call an app callback without letting its exception break the watch (or other watchers). */
function safely(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (error) {
    console.error("ai-jobs: a watch handler threw", error);
  }
}

/** A Realtime update whose payload lost columns (over 1 MB: `errors` holds a 413). */
function truncated(payload) {
  const errors = payload && payload.errors;
  return Array.isArray(errors) && errors.some((e) => String(e).includes("413"));
}

// One registry per supabase-js client: supabase.channel(topic) is per client, so
// every ai-jobs client built on it shares one feed (one channel) per job.
const feedRegistries = new WeakMap();

// The channels this module made: a channel on a job's topic that is not one of them is the app's.
const ownChannels = new WeakSet();

function registryFor(owner) {
  let registry = feedRegistries.get(owner);
  if (!registry) {
    registry = new Map();
    feedRegistries.set(owner, registry);
  }
  return registry;
}

/**
 * Create a client.
 * @param {object} options
 * @param {string} [options.baseUrl]  where the API lives ("" = same origin)
 * @param {object} [options.supabase]  the host app's supabase-js client (enables Realtime)
 * @param {() => Promise<string|null>|string|null} [options.getAccessToken]  user token for API calls
 * @param {number} [options.pollInterval]  ms between polls without Realtime (default 1000)
 * @param {number} [options.maxPollInterval]  backoff ceiling in ms (default 15000)
 * @param {number} [options.readTimeout]  ms before a read is abandoned and retried (default 10000)
 * @param {number} [options.liveTimeout]  ms after the join reply to assume changes flow when the
 *   server sends no "Subscribed to PostgreSQL" message (default 10000), or with statusVia
 *   "broadcast" no "Replication connection established" message (default 65000)
 * @param {"postgres_changes"|"broadcast"} [options.statusVia]  how job status reaches the channel
 * @param {typeof fetch} [options.fetch]
 */
export function createAiJobsClient(options = {}) {
  const baseUrl = (options.baseUrl || "").replace(/\/$/, "");
  const supabase = options.supabase || null;
  const fetchImpl = options.fetch || globalThis.fetch.bind(globalThis);
  const pollInterval = options.pollInterval ?? 1000;
  const maxPollInterval = options.maxPollInterval ?? 15000;
  const readTimeout = options.readTimeout ?? 10000;
  const statusViaBroadcast = options.statusVia === "broadcast";
  // without the live message: postgres_changes says within seconds; the replication-ready
  // message can take up to the server's 1 minute deadline (then it closes the channel)
  const liveTimeout = options.liveTimeout ?? (statusViaBroadcast ? 65000 : 10000);
  const registry = registryFor(supabase || {});

  /**
   * The user's token for API calls: getAccessToken, else the supabase client's
   * `accessToken` option (third-party auth: such clients throw on auth.getSession()),
   * else its session (getSession refreshes an expiring token).
   */
  async function accessToken() {
    if (options.getAccessToken) return (await options.getAccessToken()) || null;
    if (!supabase) return null;
    if (typeof supabase.accessToken === "function") return (await supabase.accessToken()) || null;
    try {
      const { data } = await supabase.auth.getSession();
      return (data && data.session && data.session.access_token) || null;
    } catch {
      return null;
    }
  }

  /**
   * A fresh token for Realtime (realtime-js asks the accessToken callback / session
   * again) and, after a 401 (`session`), a refreshed supabase-js session for REST.
   */
  async function refreshAuth(session = false) {
    if (!supabase) return;
    if (session && typeof supabase.accessToken !== "function") {
      try {
        await supabase.auth.refreshSession();
      } catch {
        // no session to refresh: the next read reports the 401
      }
    }
    try {
      if (supabase.realtime && typeof supabase.realtime.setAuth === "function") await supabase.realtime.setAuth();
    } catch {
      // the accessToken callback failed; realtime-js keeps its cached token
    }
  }

  async function api(method, path, body, headers = {}, retried = false) {
    const token = await accessToken();
    let response;
    try {
      response = await fetchImpl(`${baseUrl}${path}`, {
        method,
        headers: {
          ...(body !== undefined ? { "content-type": "application/json" } : {}),
          ...(token ? { authorization: `Bearer ${token}` } : {}),
          ...headers,
        },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (error) {
      // offline, DNS, CORS refused: status 0, like a read that never got an answer
      throw new AiJobsError(0, { code: "network_error", detail: String((error && error.message) || error) }, { cause: error });
    }
    if (response.status === 401 && !retried) {
      // an expired token: the request did nothing, so ask once more with a fresh one
      await refreshAuth(!options.getAccessToken);
      return api(method, path, body, headers, true);
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { detail: text.slice(0, 200) };
    }
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
    const headers = {};
    if (opts.idempotencyKey) {
      // A header carries printable ASCII only (the API answers 400 otherwise): other keys go in the body.
      if (/^[ -~]+$/.test(opts.idempotencyKey)) headers["idempotency-key"] = opts.idempotencyKey;
      else body.idempotency_key = opts.idempotencyKey;
    }
    return api("POST", "/api/jobs", body, headers);
  }

  const getJob = (id) => api("GET", `/api/jobs/${encodeURIComponent(id)}`);
  const cancelJob = (id) => api("POST", `/api/jobs/${encodeURIComponent(id)}/cancel`);
  const retryJob = (id) => api("POST", `/api/jobs/${encodeURIComponent(id)}/retry`);
  const deleteJob = (id) => api("DELETE", `/api/jobs/${encodeURIComponent(id)}`);
  const pauseJob = (id) => api("POST", `/api/jobs/${encodeURIComponent(id)}/pause`);
  const resumeJob = (id) => api("POST", `/api/jobs/${encodeURIComponent(id)}/resume`);
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

  /** GET /api/jobs/{id}/children. options: {limit, cursor} → {jobs, next_cursor}, newest first */
  function listChildren(id, options = {}) {
    const params = new URLSearchParams();
    for (const key of ["limit", "cursor"]) {
      const value = options[key];
      if (value !== undefined && value !== null && value !== "") params.set(key, String(value));
    }
    const query = params.toString();
    return api("GET", `/api/jobs/${encodeURIComponent(id)}/children${query ? `?${query}` : ""}`);
  }

  /**
   * Read the row: through Supabase (RLS) when there is a client, else the API.
   * Resolves null when the job does not exist (or is not the user's); rejects with
   * an AiJobsError (status 0 for a network failure).
   */
  async function readJob(id, signal) {
    if (supabase) {
      let query = supabase.from("ai_jobs").select(JOB_COLUMNS).eq("id", id);
      if (signal && typeof query.abortSignal === "function") query = query.abortSignal(signal);
      const { data, error, status } = await query.maybeSingle();
      if (error) {
        throw new AiJobsError(status || 0, { code: error.code || undefined, detail: error.message || "read failed" },
          { cause: error });
      }
      return data;
    }
    try {
      return await getJob(id);
    } catch (error) {
      if (error instanceof AiJobsError && error.status === 404) return null;
      throw error;
    }
  }

  /**
   * The shared state of one watched job: the latest row, one Realtime channel and
   * one read loop, whatever the number of watchers. Released with the last watcher.
   */
  function createFeed(jobId) {
    const watchers = new Set();
    const feed = { jobId, latest: null, mode: null, end: null, watchers, output: null, wantsOutput: false };
    // The job's one channel: the private topic ai-jobs-live:<id> (status and live output)
    let channel = null;
    let pendingOutput = []; // deltas past the text we have (a gap), kept until a read fills it
    let gapTimer = null;
    let live = false; // the server confirmed that status changes flow
    let reading = false;
    let readAgain = false;
    let retryDelay = pollInterval;
    let pollTimer = null;
    let polls = 0;
    let liveTimer = null;
    let rejoinTimer = null;
    let rejoins = 0;
    let stableTimer = null; // resets `rejoins` once the channel has stayed live LIVE_STABLE_MS
    let sleeper = null;
    let failing = false; // an error was reported and nothing has worked since
    // feed.latest may predate a change Realtime never delivered: while not live (changes
    // committed then are dropped by the server), and after the live moment until a read that
    // started at or after it answers. Meanwhile a missing (TOASTed) column must not be taken
    // from feed.latest: the event's newer updated_at would then make the catch-up read (same
    // or older updated_at) look stale, and the old value would stay for good. Such events are
    // held instead and applied on top of that read's row, in order (older ones then fall to
    // the updated_at guard); one that arrives while not live is dropped, since the read at the
    // live moment starts after it.
    let reconciling = true;
    let reconcileFrom = Infinity; // the number of the first read that ends it (Infinity: not live)
    let readsStarted = 0;
    let held = []; // events waiting for that read (see hold)
    const ownCallbacks = new Set(); // the listeners this feed put on its channel
    let topicInUseReported = false;

    function resumed() {
      if (!failing) return;
      failing = false;
      emit("resume");
    }

    const emit = (kind, ...args) => {
      for (const watcher of [...watchers]) watcher[kind](...args);
    };

    function setMode(next) {
      if (feed.mode === next) return;
      feed.mode = next;
      emit("mode", next);
    }

    function finish(end, value) {
      if (feed.end) return;
      feed.end = { kind: end, value };
      release();
      if (end === "done") emit("done", value);
      else if (end === "gone") emit("gone");
      else emit("failed", value);
    }

    function release() {
      if (registry.get(jobId) === feed) registry.delete(jobId);
      clearTimeout(pollTimer);
      clearTimeout(liveTimer);
      clearTimeout(rejoinTimer);
      clearTimeout(gapTimer);
      clearTimeout(stableTimer);
      pollTimer = liveTimer = rejoinTimer = gapTimer = stableTimer = null;
      if (sleeper) sleeper();
      if (typeof document !== "undefined") document.removeEventListener("visibilitychange", onVisible);
      dropChannel();
    }

    // -- live output -------------------------------------------------------------

    function emitOutput() {
      const out = feed.output;
      if (out) emit("output", out);
    }

    /** Take the row's snapshot (the text so far) when it is ahead of what we show. */
    function adoptSnapshot(row) {
      if (!row) return;
      const snap = row.stream;
      let changed = false;
      if (snap && typeof snap.text === "string" && typeof snap.id === "string") {
        const out = feed.output;
        if (!out || out.stream !== snap.id) {
          feed.output = { stream: snap.id, format: snap.format || "text", text: snap.text, partial: parsePartial(snap), done: false };
          pendingOutput = pendingOutput.filter((m) => m.stream === snap.id);
          changed = true;
        } else if (snap.text.length > out.text.length && snap.text.startsWith(out.text)) {
          feed.output = { ...out, text: snap.text, partial: out.format === "json" ? parsePartial(snap) ?? out.partial : undefined };
          changed = true;
        }
      }
      if (isTerminal(row) && row.status === "completed" && feed.output && !feed.output.done) {
        // the final text is the result's (the last snapshot may lag the last delta)
        const result = row.result || {};
        const final = feed.output.format === "text" && typeof result.text === "string" ? result.text : feed.output.text;
        const partial = feed.output.format === "json" ? ("data" in result ? result.data : result) : undefined;
        feed.output = { ...feed.output, text: final, partial, done: true };
        changed = true;
      }
      if (drainOutput() || changed) emitOutput();
    }

    function parsePartial(snap) {
      if (!snap || snap.format !== "json") return undefined;
      try {
        return JSON.parse(snap.text);
      } catch {
        return undefined; // incomplete JSON: the next message carries `partial`
      }
    }

    /** Apply kept deltas that now connect; true when the text grew. */
    function drainOutput() {
      let grew = false;
      let progressed = true;
      while (progressed && pendingOutput.length && feed.output) {
        progressed = false;
        pendingOutput.sort((a, b) => a.offset - b.offset);
        const rest = [];
        for (const m of pendingOutput) {
          if (m.stream !== feed.output.stream) continue;
          if (m.offset <= feed.output.text.length) {
            if (appendOutput(m)) grew = true;
            progressed = true;
          } else {
            rest.push(m);
          }
        }
        pendingOutput = rest;
      }
      if (pendingOutput.length) scheduleGapRead();
      else {
        clearTimeout(gapTimer);
        gapTimer = null;
      }
      return grew;
    }

    /** A delta at or before the end of our text: append what is new. */
    function appendOutput(m) {
      const out = feed.output;
      const end = m.offset + m.delta.length;
      if (end <= out.text.length) {
        if (m.done && !out.done && end === out.text.length) feed.output = { ...out, done: true };
        return false; // a duplicate or an overlap we already have
      }
      const text = out.text + m.delta.slice(out.text.length - m.offset);
      feed.output = { ...out, text, partial: "partial" in m ? m.partial : out.partial, done: Boolean(m.done) };
      return true;
    }

    function scheduleGapRead() {
      if (gapTimer || feed.end) return;
      requestRead(); // the row's snapshot is written with each progress write (every 0.5 s)
      gapTimer = setTimeout(() => {
        gapTimer = null;
        if (pendingOutput.length && !feed.end) scheduleGapRead();
      }, 400);
    }

    function onOutput(message) {
      const m = message && message.payload;
      if (feed.end || !feed.wantsOutput || !m || m.job !== jobId || typeof m.delta !== "string" || typeof m.offset !== "number") return;
      const out = feed.output;
      if (!out || out.stream !== m.stream) {
        if (m.offset === 0) {
          feed.output = { stream: m.stream, format: m.format || "text", text: "", partial: undefined, done: false };
          pendingOutput = pendingOutput.filter((p) => p.stream === m.stream);
        } else {
          pendingOutput.push(m); // a stream we have no start of: the row has it
          scheduleGapRead();
          return;
        }
      }
      if (m.offset > feed.output.text.length) {
        pendingOutput.push(m);
        scheduleGapRead();
        return;
      }
      const grew = appendOutput(m);
      if (drainOutput() || grew) emitOutput();
    }

    /** A "status" event (statusVia "broadcast"): small; terminal states and unknown rows are read. */
    function onStatusEvent(message) {
      const p = message && message.payload;
      if (feed.end || !p || p.id !== jobId) return;
      if (p.op === "DELETE") {
        finish("gone");
        return;
      }
      if (isTerminal(p) || !feed.latest) {
        requestRead();
        return;
      }
      // The other columns come from feed.latest, which may predate a missed change while
      // reconciling (see onChange)
      if (reconciling) {
        hold(() => onStatusEvent(message));
        return;
      }
      const merged = { ...feed.latest };
      for (const key of ["status", "progress", "progress_message", "attempts", "cancel_requested_at", "wait_reason",
        "updated_at", "finished_at"]) {
        if (key in p) merged[key] = p[key];
      }
      apply(merged); // the updated_at guard drops an older event
    }

    feed.wantOutput = () => {
      if (feed.wantsOutput) return;
      feed.wantsOutput = true;
      if (feed.latest) adoptSnapshot(feed.latest); // deltas then apply from the text so far (the channel has them)
    };

    function dropChannel() {
      if (!channel || !supabase) return;
      const c = channel;
      channel = null;
      live = false;
      if (appListens(c)) {
        // The app asked this supabase client for the same topic and got our channel
        // (RealtimeClient.ts channel() returns the existing one), then listened on it:
        // removing it would silence the app. It stays joined, the app's to remove; only our
        // listeners come off (our handlers ignore everything once the feed has ended anyway).
        ownChannels.delete(c);
        unlisten(c);
        return;
      }
      Promise.resolve()
        .then(() => supabase.removeChannel(c))
        .catch(() => {}); // the socket is gone: nothing to leave
    }

    /** Whether a listener we did not add is on the channel (RealtimeChannel.ts `bindings`, by type). */
    function appListens(c) {
      const bindings = (c && c.bindings) || {};
      return Object.values(bindings).some((list) => Array.isArray(list) && list.some((b) => b && !ownCallbacks.has(b.callback)));
    }

    /** Take our listeners off a channel left to the app: RealtimeChannel.ts `bindings` and the phoenix channel's (channelAdapter.off, by ref). */
    function unlisten(c) {
      try {
        for (const [type, list] of Object.entries(c.bindings || {})) {
          if (!Array.isArray(list)) continue;
          const ours = list.filter((b) => b && ownCallbacks.has(b.callback));
          if (!ours.length) continue;
          c.bindings[type] = list.filter((b) => !ours.includes(b));
          for (const b of ours) {
            if (c.channelAdapter && typeof c.channelAdapter.off === "function") c.channelAdapter.off(type, b.ref);
          }
        }
      } catch {
        // another realtime-js's internals: our listeners stay, inert
      }
    }

    function apply(row) {
      if (feed.end || !row || row.id !== jobId) return;
      if (feed.latest && timeKey(row.updated_at) <= timeKey(feed.latest.updated_at)) return; // stale or duplicate
      feed.latest = row;
      emit("update", row);
      if (isTerminal(row)) finish("done", row);
    }

    function sleep(ms) {
      return new Promise((resolve) => {
        const timer = setTimeout(() => { sleeper = null; resolve(); }, ms);
        sleeper = () => { clearTimeout(timer); sleeper = null; resolve(); };
      });
    }

    /** Read now; a read asked for while one is in flight runs again after it (that one may predate the change). */
    function requestRead() {
      if (feed.end) return;
      if (reading) {
        readAgain = true;
        return;
      }
      reading = true;
      readLoop()
        .catch((error) => console.error("ai-jobs: read loop", error))
        .finally(() => { reading = false; });
    }

    async function readLoop() {
      do {
        readAgain = false;
        const seq = ++readsStarted;
        const abort = typeof AbortController !== "undefined" ? new AbortController() : null;
        const timer = abort ? setTimeout(() => abort.abort(), readTimeout) : null;
        try {
          const row = await readJob(jobId, abort ? abort.signal : undefined);
          if (feed.end) return;
          retryDelay = pollInterval;
          if (row === null) {
            finish("gone");
            return;
          }
          const caughtUp = reconciling && seq >= reconcileFrom; // started after every change we missed
          if (caughtUp) reconciling = false;
          resumed();
          if (feed.wantsOutput) adoptSnapshot(row);
          apply(row);
          if (caughtUp) replayHeld();
        } catch (error) {
          if (feed.end) return;
          const failure = error instanceof AiJobsError ? error
            : new AiJobsError(0, { code: "network_error", detail: String((error && error.message) || error) }, { cause: error });
          if (!retryable(failure)) {
            emit("error", failure);
            finish("failed", failure);
            return;
          }
          emit("error", failure);
          failing = true;
          if (authFailure(failure)) await refreshAuth(true);
          await sleep(retryDelay);
          retryDelay = Math.min(retryDelay * 2, maxPollInterval);
          readAgain = true;
        } finally {
          if (timer) clearTimeout(timer);
        }
      } while (readAgain && !feed.end);
    }

    /**
     * Polls while changes are not pushed: every pollInterval while connecting (until the live
     * moment, at most the join timeout plus liveTimeout: a change committed before it is never
     * pushed, so only a read shows it), backing off to maxPollInterval in a fallback.
     */
    function schedulePoll() {
      clearTimeout(pollTimer);
      pollTimer = null;
      if (feed.end || live) return;
      let delay = pollInterval;
      if (feed.mode === "polling-fallback") delay = Math.min(pollInterval * 2 ** Math.min(polls, 16), maxPollInterval);
      pollTimer = setTimeout(() => {
        pollTimer = null;
        polls += 1;
        requestRead();
        schedulePoll();
      }, delay);
    }

    function goLive() {
      if (feed.end || live) return;
      live = true;
      clearTimeout(stableTimer);
      stableTimer = setTimeout(() => { stableTimer = null; rejoins = 0; }, LIVE_STABLE_MS);
      polls = 0;
      clearTimeout(liveTimer);
      clearTimeout(pollTimer);
      pollTimer = liveTimer = null;
      setMode("realtime");
      resumed();
      catchUp(); // anything that changed before the subscription went live (held events are older)
    }

    /**
     * Read the whole row, and merge no event's missing columns into feed.latest until a read
     * started from now on has answered (one asked for while a read is in flight is the next one).
     */
    function catchUp() {
      reconciling = true;
      if (live) {
        reconcileFrom = readsStarted + 1;
        held = []; // that read starts after them
      } // not live: changes may still be missed, the live moment decides
      requestRead();
    }

    /** An event that needs feed.latest while it may be stale: kept for after the catch-up read if live. */
    function hold(event) {
      if (live) held.push(event);
    }

    function replayHeld() {
      const events = held;
      held = [];
      for (const event of events) {
        if (feed.end) return;
        event(); // held again, in order, if reconciling started over
      }
    }

    function goDown(kind) {
      live = false;
      reconciling = true; // what is committed from now until the next live moment is not pushed
      reconcileFrom = Infinity;
      held = []; // the read at the next live moment starts after them
      clearTimeout(liveTimer);
      clearTimeout(stableTimer);
      liveTimer = stableTimer = null;
      if (feed.mode !== kind) {
        polls = 0;
        setMode(kind);
      }
      if (!pollTimer) schedulePoll();
    }

    function onChange(payload) {
      if (feed.end || !payload) return;
      if (payload.eventType === "DELETE") {
        // not RLS-filtered, primary key only: it must name this job to mean anything
        const old = payload.old || {};
        if (old.id === jobId) finish("gone");
        return;
      }
      let row = payload.new;
      if (!row || row.id !== jobId) return;
      const cut = truncated(payload);
      if (cut || COLUMN_NAMES.some((key) => !(key in row))) {
        // Columns are missing. A row over 1 MB (413) loses every value over 64 bytes, changed
        // or not (apply_rls.sql error_record_exceeds_max_size): read the whole row, as without
        // a last row or for an end state without its result. An UPDATE leaves out every
        // unchanged TOASTed value (over ~2 kB: input, checkpoints, result, stream…), which
        // Realtime cannot recover without REPLICA IDENTITY FULL: the last full row stands in
        // for them, but only once it is known to be the row just before this change, not
        // while a missed change may lie in between (reconciling: the event is held).
        if (!feed.latest || cut || (isTerminal(row) && !("result" in row))) {
          catchUp();
          return;
        }
        if (reconciling) {
          hold(() => onChange(payload));
          return;
        }
        row = { ...feed.latest, ...row };
      }
      if (feed.wantsOutput && row.updated_at && (!feed.latest || timeKey(row.updated_at) > timeKey(feed.latest.updated_at))) {
        adoptSnapshot(row);
      }
      apply(row);
    }

    function onSystem(c, payload) {
      if (c !== channel || feed.end || !payload) return;
      if (payload.extension === "postgres_changes") {
        if (statusViaBroadcast) return;
        if (payload.status === "ok") goLive();
        else goDown("polling-fallback"); // the server retries the subscription and reports ok later
      } else if (payload.extension === "system" && payload.status === "ok") {
        // "Replication connection established" (asked for with statusVia "broadcast"):
        // only now do status broadcasts flow
        if (statusViaBroadcast) goLive();
      } else if (payload.status === "error") {
        // e.g. "Token has expired …", "Replication connection was not established in time": phx_close follows
        failing = true;
        emit("error", new AiJobsError(0, { code: "realtime_closed", detail: String(payload.message || "channel closed") }));
      }
    }

    function onStatus(c, status, error) {
      if (c !== channel || feed.end) return;
      if (status === "SUBSCRIBED") {
        // Output: the first read already took the row's text so far; a delta that does not
        // connect to it means some were sent before the join, and that gap triggers a re-read.
        // Joined, but status flows only once the server says so: "Subscribed to PostgreSQL",
        // or with statusVia "broadcast" "Replication connection established". Reads go on
        // until then, and once more at that moment.
        clearTimeout(liveTimer);
        liveTimer = setTimeout(goLive, liveTimeout); // a server that never says so
      } else if (status === "CHANNEL_ERROR" || status === "TIMED_OUT") {
        // refused (not the owner, no Realtime Authorization policy, too many channels) or
        // unreachable: realtime-js (phoenix) rejoins an errored channel by itself; make that
        // join carry a fresh token
        if (error) {
          failing = true;
          emit("error", new AiJobsError(0, { code: "realtime_error", detail: String(error.message || error) }));
        }
        goDown("polling-fallback");
        refreshAuth();
      } else if (status === "CLOSED") {
        // closed by the server (token expired, shutdown): realtime-js never rejoins it, so we do
        channel = null;
        goDown("polling-fallback");
        scheduleRejoin();
      }
    }

    function scheduleRejoin() {
      clearTimeout(rejoinTimer);
      const delay = [250, 1000, 2000, 5000, 10000][Math.min(rejoins, 4)];
      rejoins += 1;
      rejoinTimer = setTimeout(async () => {
        rejoinTimer = null;
        await refreshAuth();
        if (!feed.end && !channel) subscribe();
      }, delay);
    }

    /**
     * Join the job's private channel: Realtime Authorization lets only the owner join it
     * (the policy on realtime.messages), so it works with "Allow public access" off, and
     * one channel carries status (postgres_changes, or "status" broadcasts) and output.
     */
    async function subscribe() {
      // the join must carry the user's token, not just the anon key: Realtime authorizes
      // the join and every change against the policies as that user
      try {
        if (supabase.realtime && typeof supabase.realtime.setAuth === "function") await supabase.realtime.setAuth();
      } catch {
        // keep the cached token; a refused join reports CHANNEL_ERROR
      }
      if (feed.end || channel) return;
      const topic = `ai-jobs-live:${jobId}`; // the policy names this topic exactly: no suffix possible
      const taken = (typeof supabase.getChannels === "function" ? supabase.getChannels() : [])
        .find((ch) => ch.topic === `realtime:${topic}`);
      if (taken && !ownChannels.has(taken)) {
        // The app's own channel on this topic, on this supabase client: realtime-js keeps one
        // channel per topic per client (RealtimeClient.ts channel() would return it), and
        // postgres_changes listeners cannot be added to it once subscribed (RealtimeChannel.ts
        // on() throws). Say so once and read; look again later, in case the app removes it.
        if (!topicInUseReported) {
          topicInUseReported = true;
          emit("error", new AiJobsError(0, { code: "realtime_topic_in_use", detail:
            `this supabase client already has a channel on ${topic} that ai-jobs did not create: ` +
            "the job is read instead of pushed (use watchJob's onText, or another supabase client, for that channel)" }));
        }
        goDown("polling-fallback");
        scheduleRejoin();
        return;
      }
      if (taken) { // our previous channel is still leaving; reads go on meanwhile
        scheduleRejoin();
        return;
      }
      let c = null;
      try {
        const broadcast = { self: false, ack: false };
        if (statusViaBroadcast) broadcast.replication_ready = true; // the live moment (see onSystem)
        c = supabase.channel(topic, { config: { private: true, broadcast } });
        ownChannels.add(c);
        channel = c;
        const system = (payload) => onSystem(c, payload);
        for (const fn of [onStatusEvent, onChange, onOutput, system]) ownCallbacks.add(fn);
        if (statusViaBroadcast) c.on("broadcast", { event: "status" }, onStatusEvent);
        else c.on("postgres_changes", { event: "*", schema: "public", table: "ai_jobs", filter: `id=eq.${jobId}` }, onChange);
        c.on("broadcast", { event: "output" }, onOutput)
          .on("system", {}, system)
          .subscribe((status, error) => onStatus(c, status, error));
      } catch (error) {
        if (c && channel === c) channel = null;
        emit("error", new AiJobsError(0, { code: "realtime_error", detail: String((error && error.message) || error) }));
        goDown("polling-fallback");
        scheduleRejoin();
      }
    }

    function onVisible() {
      if (typeof document !== "undefined" && document.visibilityState === "visible") requestRead();
    }

    feed.start = () => {
      if (feed.end) return; // every watcher stopped before it started (React StrictMode's double effect)
      feed.started = true;
      if (typeof document !== "undefined") document.addEventListener("visibilitychange", onVisible);
      requestRead(); // the first state at once, not after the join
      if (!supabase) {
        setMode("polling");
        schedulePoll();
        return;
      }
      setMode("connecting");
      schedulePoll(); // until the subscription is live, changes are only seen by reading
      subscribe();
    };
    feed.release = release;
    return feed;
  }

  /**
   * Follow one job until it ends. Returns an unsubscribe function.
   * handlers: {onUpdate(job), onDone(job), onGone(jobId), onError(error), onResume(), onMode(mode),
   *   onText(text, info), onPartial(value, info)}
   * onText gets the whole text so far of the streaming Claude call each time it grows
   * (info: {stream, format, done}); onPartial gets structured output's JSON so far.
   * onError reports problems that are being retried (and, before the watch stops, one
   * that cannot be: a refused read); onResume says reads or Realtime work again.
   * Watchers of one job share one feed: one channel, one read loop.
   */
  function watchJob(givenId, handlers = {}) {
    const { onUpdate, onDone, onGone, onError, onMode, onResume, onText, onPartial } = handlers;
    const wantsOutput = typeof onText === "function" || typeof onPartial === "function";
    let shownText = null;
    let shownPartial;
    let stopped = false;
    let latest = null;
    let mode = null;
    if (typeof givenId !== "string" || !UUID.test(givenId)) {
      queueMicrotask(() => {
        if (!stopped) safely(onError, new AiJobsError(400, { code: "invalid_job_id", detail: "job id must be a UUID" }));
      });
      return () => { stopped = true; };
    }
    // Postgres prints uuids in lower case: rows, events and topics are matched on that form
    const jobId = givenId.toLowerCase();
    let feed = registry.get(jobId);
    if (!feed || feed.end) {
      feed = createFeed(jobId);
      registry.set(jobId, feed);
      queueMicrotask(feed.start);
    }
    const watcher = {
      update(job) {
        if (stopped) return;
        if (latest && timeKey(job.updated_at) <= timeKey(latest.updated_at)) return;
        latest = job;
        safely(onUpdate, job);
      },
      done(job) {
        if (stopped) return;
        this.update(job);
        stop();
        safely(onDone, job);
      },
      gone() {
        if (stopped) return;
        stop();
        safely(onGone, givenId);
      },
      failed() {
        stop();
      },
      error(error) {
        if (!stopped) safely(onError, error);
      },
      resume() {
        if (!stopped) safely(onResume);
      },
      mode(next) {
        if (stopped || next === mode) return;
        mode = next;
        safely(onMode, next);
      },
      output(out) {
        if (stopped || !wantsOutput || !out) return;
        const info = { stream: out.stream, format: out.format, done: out.done };
        if (out.text !== shownText) {
          shownText = out.text;
          safely(onText, out.text, info);
        }
        if (out.format === "json" && out.partial !== undefined && out.partial !== shownPartial) {
          shownPartial = out.partial;
          safely(onPartial, out.partial, info);
        }
      },
    };
    const current = feed;
    current.watchers.add(watcher);
    if (wantsOutput) current.wantOutput();
    queueMicrotask(() => {
      // a late watcher starts from what the feed already knows
      if (stopped) return;
      if (current.mode) watcher.mode(current.mode);
      if (current.output) watcher.output(current.output);
      if (current.latest) watcher.update(current.latest);
    });

    function stop() {
      if (stopped) return;
      stopped = true;
      current.watchers.delete(watcher);
      if (current.watchers.size === 0 && !current.end) {
        current.end = { kind: "stopped" };
        current.release();
      }
    }
    return stop;
  }

  return {
    createJob, getJob, listJobs, listJobTypes, cancelJob, retryJob, deleteJob, pauseJob, resumeJob, listChildren,
    watchJob, readJob,
  };
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
export const pauseJob = (...args) => client().pauseJob(...args);
export const resumeJob = (...args) => client().resumeJob(...args);
export const listChildren = (...args) => client().listChildren(...args);
export const watchJob = (...args) => client().watchJob(...args);
