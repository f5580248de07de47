// The demo console: a job form generated from GET /api/job-types, a live
// progress view, cancel/retry, and the user's recent jobs. config.js chooses:
// - auth "token" (what `ai-jobs dev` serves): a dev access token (the banner's
//   link or pasted), kept in localStorage; with supabaseUrl set (the local
//   Supabase edge) supabase-js is made with the `accessToken` option, so REST
//   reads and Realtime joins carry that token and updates are pushed;
// - supabaseUrl + anon key without auth "token" (a deployment): Supabase Auth
//   sign-in and Realtime;
// - neither: token + polling (`ai-jobs serve` with public/config.js unchanged).
import { createAiJobsClient, isTerminal } from "./ai-jobs.js";

const config = window.AI_JOBS_CONFIG || {};
const $ = (id) => document.getElementById(id);
// localStorage: survives a reload and is shared by the tabs of this origin (the
// dev console on loopback; see README "The demo console").
const TOKEN_KEY = "ai-jobs-demo-token";

let client = null;
let supabaseClient = null;
let jobTypes = [];
let stopWatching = null;
let currentJob = null;

// -- connection ---------------------------------------------------------------------

async function loadSupabase() {
  if (!window.supabase) {
    if (!config.supabaseJsUrl) {
      throw new Error("config.js sets no supabaseJsUrl (the supabase-js UMD build: your own copy or a CDN)");
    }
    await new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = config.supabaseJsUrl;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`could not load supabase-js from ${script.src}`));
      document.head.append(script);
    });
  }
  return window.supabase;
}

async function connect() {
  if (config.auth === "token" || !(config.supabaseUrl && config.supabaseAnonKey)) {
    await connectWithToken();
    return;
  }
  const { createClient } = await loadSupabase();
  const supabase = createClient(config.supabaseUrl, config.supabaseAnonKey);
  client = createAiJobsClient({ baseUrl: config.apiBaseUrl || "", supabase,
    ...(config.statusVia ? { statusVia: config.statusVia } : {}) });
  const { data } = await supabase.auth.getSession();
  showLogin(supabase, data.session);
  supabase.auth.onAuthStateChange((_event, session) => showLogin(supabase, session));
}

async function connectWithToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    localStorage.setItem(TOKEN_KEY, params.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const getAccessToken = () => localStorage.getItem(TOKEN_KEY);
  let supabase = null;
  if (config.supabaseUrl && config.supabaseAnonKey) {
    try {
      const { createClient } = await loadSupabase();
      // third-party-auth style: no Supabase Auth here, every request and join uses this token
      supabase = createClient(config.supabaseUrl, config.supabaseAnonKey, {
        accessToken: async () => getAccessToken(),
      });
    } catch (error) {
      $("notice").hidden = false;
      $("notice").textContent = `${error.message}; following jobs by polling.`;
    }
  } else if (config.notice) {
    $("notice").hidden = false;
    $("notice").textContent = config.notice;
  }
  supabaseClient = supabase;
  client = createAiJobsClient({
    baseUrl: config.apiBaseUrl || "",
    getAccessToken,
    ...(supabase ? { supabase } : {}),
    pollInterval: config.pollInterval || 1000,
    ...(config.statusVia ? { statusVia: config.statusVia } : {}),
  });
  $("token-form").onsubmit = (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    signIn(token);
  };
  $("switch-user").onclick = () => signOut("Paste the token of the user to switch to.");
  // another tab signed in or out: follow it, without writing back (that tab cleans up its
  // own token; a removal from here would reach it as an event and wipe its message)
  window.addEventListener("storage", (event) => {
    if (event.key === TOKEN_KEY) showIdentity(undefined, { followOnly: true });
  });
  showIdentity();
}

/** The token's claims, decoded without verifying: for display only (the API verifies). */
function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(decodeURIComponent(escape(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")))));
  } catch {
    return null;
  }
}

function signIn(token) {
  const claims = claimsOf(token);
  if (!claims || !claims.sub) {
    signOut("That is not an access token (ai-jobs token --user you@example.com prints one).");
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  showIdentity();
}

function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  showIdentity(message);
}

/** Signed in: who, and "Switch user". Not (or expired): the token form, and an expired
 * or broken token is removed from storage unless `followOnly` (another tab's change). */
function showIdentity(message, { followOnly = false } = {}) {
  const token = localStorage.getItem(TOKEN_KEY);
  const claims = token ? claimsOf(token) : null;
  const expired = claims && typeof claims.exp === "number" && claims.exp * 1000 <= Date.now();
  if (token && (!claims || expired)) {
    if (!followOnly) localStorage.removeItem(TOKEN_KEY);
    message = expired ? "Your token has expired: paste a fresh one (ai-jobs token --user …)." : "The saved token was not valid: paste a fresh one.";
  }
  const signedIn = Boolean(token && claims && !expired);
  const who = signedIn ? claims.email || claims.sub : "";
  if (signedIn && $("signed-in").dataset.sub !== claims.sub) clearCurrentJob();
  $("signed-in").hidden = !signedIn;
  $("signed-in").dataset.sub = signedIn ? claims.sub : "";
  $("token-form").hidden = signedIn;
  $("who").textContent = who;
  $("who").title = signedIn ? `user id ${claims.sub}` : "";
  $("auth-status").textContent = signedIn ? "" : message || "Paste a token to start.";
  if (supabaseClient && supabaseClient.realtime && typeof supabaseClient.realtime.setAuth === "function") {
    supabaseClient.realtime.setAuth().catch(() => {}); // joins from now on carry this user's token
  }
  if (signedIn) refreshRecent();
  else {
    clearCurrentJob();
    $("recent").querySelector("tbody").replaceChildren();
    if (message) $("token").focus();
  }
}

function clearCurrentJob() {
  clearLive();
  if (stopWatching) stopWatching();
  stopWatching = null;
  currentJob = null;
  $("job-view").hidden = true;
  $("no-job").hidden = false;
  setMode("idle");
}

function showLogin(supabase, session) {
  const form = $("login-form");
  form.hidden = Boolean(session);
  $("auth-status").textContent = session ? `Signed in as ${session.user.email}.` : "Sign in to submit jobs.";
  form.onsubmit = async (event) => {
    event.preventDefault();
    const { error } = await supabase.auth.signInWithPassword({ email: $("email").value, password: $("password").value });
    $("auth-status").textContent = error ? error.message : "Signed in.";
  };
  $("magic-link").onclick = async () => {
    const { error } = await supabase.auth.signInWithOtp({ email: $("email").value });
    $("auth-status").textContent = error ? error.message : "Check your email for the sign-in link.";
  };
  if (session) refreshRecent();
}

function setMode(mode) {
  const labels = {
    connecting: "connecting to Realtime", realtime: "realtime", polling: "polling",
    "polling-fallback": "polling (Realtime reconnecting)",
  };
  $("mode").textContent = labels[mode] || mode;
  $("mode").dataset.mode = mode;
}

// -- the form, generated from each type's JSON Schema ---------------------------------

function resolve(schema, root) {
  if (schema && schema.$ref) return resolve(root.$defs[schema.$ref.split("/").pop()], root);
  if (schema && schema.anyOf) return resolve(schema.anyOf.find((s) => s.type !== "null") || schema.anyOf[0], root);
  return schema || {};
}

function fieldFor(name, raw, root, required) {
  const schema = resolve(raw, root);
  const id = `field-${name}`;
  const wrapper = document.createElement("div");
  wrapper.className = "field";
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = `${raw.title || schema.title || name}${required ? " *" : ""}`;
  let control;
  if (schema.type === "boolean") {
    control = Object.assign(document.createElement("input"), { type: "checkbox", checked: Boolean(raw.default) });
    wrapper.classList.add("checkbox");
  } else if (schema.type === "integer" || schema.type === "number") {
    control = Object.assign(document.createElement("input"), { type: "number", step: schema.type === "integer" ? "1" : "any" });
    if (schema.minimum !== undefined) control.min = schema.minimum;
    if (schema.maximum !== undefined) control.max = schema.maximum;
    if (raw.default !== undefined && raw.default !== null) control.value = raw.default;
  } else if (schema.type === "array" || schema.type === "object" || schema.maxLength > 200 || !schema.maxLength) {
    control = document.createElement("textarea");
    control.rows = schema.type === "string" ? 4 : 3;
    if (raw.default !== undefined && raw.default !== null) {
      control.value = schema.type === "array" ? raw.default.join("\n") : typeof raw.default === "string" ? raw.default : JSON.stringify(raw.default);
    }
  } else {
    control = Object.assign(document.createElement("input"), { type: "text" });
    if (raw.default !== undefined && raw.default !== null) control.value = raw.default;
  }
  control.id = id;
  control.name = name;
  control.dataset.kind = schema.type || "string";
  if (required) control.required = true;
  const hint = document.createElement("small");
  hint.id = `${id}-hint`;
  hint.textContent = raw.description || (schema.type === "array" ? "one item per line" : schema.type === "object" ? "JSON" : "");
  const error = document.createElement("small");
  error.id = `${id}-error`;
  error.className = "field-error";
  control.setAttribute("aria-describedby", `${hint.id} ${error.id}`);
  wrapper.append(label, control, hint, error);
  return wrapper;
}

function renderForm() {
  const type = jobTypes.find((t) => t.type === $("job-type").value);
  const fieldset = $("input-fields");
  fieldset.querySelectorAll(".field").forEach((el) => el.remove());
  if (!type) return;
  $("job-type-description").textContent = type.description;
  const schema = type.input_schema;
  const required = new Set(schema.required || []);
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    fieldset.append(fieldFor(name, prop, schema, required.has(name)));
  }
}

function readForm() {
  const input = {};
  for (const control of $("input-fields").querySelectorAll("input, textarea")) {
    const kind = control.dataset.kind;
    if (kind === "boolean") {
      input[control.name] = control.checked;
      continue;
    }
    const value = control.value.trim();
    if (value === "") continue;
    if (kind === "integer" || kind === "number") input[control.name] = Number(value);
    else if (kind === "array") input[control.name] = value.split("\n").map((s) => s.trim()).filter(Boolean);
    else if (kind === "object") input[control.name] = JSON.parse(value);
    else input[control.name] = value;
  }
  return input;
}

function showFormErrors(error) {
  const box = $("form-errors");
  document.querySelectorAll(".field-error").forEach((el) => (el.textContent = ""));
  document.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  if (!error) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.textContent = error.message;
  for (const fieldError of error.errors || []) {
    const name = fieldError.field.replace(/^input\./, "").split(".")[0];
    const target = $(`field-${name}-error`);
    if (target) {
      target.textContent = fieldError.message;
      $(`field-${name}`).setAttribute("aria-invalid", "true");
    }
  }
}

async function submit(event) {
  event.preventDefault();
  showFormErrors(null);
  let input;
  try {
    input = readForm();
  } catch (error) {
    showFormErrors(new Error(`Input is not valid JSON: ${error.message}`));
    return;
  }
  $("submit").disabled = true;
  try {
    const job = await client.createJob($("job-type").value, input);
    watch(job);
    refreshRecent();
  } catch (error) {
    showFormErrors(error);
  } finally {
    $("submit").disabled = false;
  }
}

// -- the current job ------------------------------------------------------------------

function render(job) {
  currentJob = job;
  $("no-job").hidden = true;
  $("job-view").hidden = false;
  $("job-id").textContent = job.id;
  $("job-type-label").textContent = job.job_type;
  $("job-status").textContent = job.status;
  $("job-status").dataset.status = job.status;
  $("progress").value = job.progress;
  $("progress").textContent = `${job.progress}%`;
  $("progress-percent").textContent = `${job.progress}%`;
  $("progress-message").textContent = job.progress_message || "";
  // a parent job's child jobs, counted by the database as they finish
  const kids = job.children;
  $("job-children").hidden = !kids;
  $("job-children").textContent = kids ? `Child jobs: ${kids.done} of ${kids.total} done${kids.failed ? `, ${kids.failed} failed` : ""}` : "";
  $("cancel").disabled = !(job.status === "pending" || job.status === "running");
  $("retry").disabled = !(job.status === "failed" || job.status === "cancelled");
  const failed = job.status === "failed" || (job.error && job.status !== "completed");
  $("job-error").hidden = !failed;
  $("job-error").textContent = job.error ? `${job.error.message} (${job.error.code}${job.error.retryable && job.status === "pending" ? ", will retry" : ""})` : "";
  $("result-view").hidden = job.status !== "completed";
  if (job.status === "completed") {
    $("result").textContent = JSON.stringify(job.result, null, 2);
    const usage = job.usage || {};
    // cost_usd sums the priced calls only; cost_complete: false means some had no known price.
    const cost = typeof usage.cost_usd === "number" ? `~$${usage.cost_usd.toFixed(4)}` : "cost unknown";
    const partial = usage.cost_complete === false && typeof usage.cost_usd === "number" ? " + calls without a known price" : "";
    $("usage").textContent = usage.requests ? `${usage.input_tokens} input + ${usage.output_tokens} output tokens, ${cost}${partial}` : "";
  }
}

// Live Claude output: the text as it is written (ai.generate), the JSON so far (ai.extract, ai.match).
function clearLive() {
  $("live-view").hidden = true;
  $("live-text").textContent = "";
  $("live-text").dataset.steps = "0";
}

function showLive(text, info) {
  if (info.format === "json") return; // onPartial shows structured output
  $("live-view").hidden = false;
  $("live-title").textContent = info.done ? "Output" : "Writing…";
  $("live-text").textContent = text;
  $("live-text").dataset.format = "text";
  $("live-text").dataset.steps = String(Number($("live-text").dataset.steps || 0) + 1);
}

function showPartial(value, info) {
  $("live-view").hidden = false;
  $("live-title").textContent = info.done ? "Output" : "Extracting…";
  $("live-text").textContent = JSON.stringify(value, null, 2);
  $("live-text").dataset.format = "json";
  $("live-text").dataset.steps = String(Number($("live-text").dataset.steps || 0) + 1);
}

function watch(job) {
  if (stopWatching) stopWatching();
  clearLive();
  render(job);
  stopWatching = client.watchJob(job.id, {
    onText: showLive,
    onPartial: showPartial,
    onUpdate: render,
    onDone: () => refreshRecent(),
    onGone: () => {
      $("job-status").textContent = "deleted";
      $("job-status").dataset.status = "gone";
      refreshRecent();
    },
    onMode: setMode,
    onError: (error) => console.warn("ai-jobs watch:", error),
  });
}

async function act(action) {
  if (!currentJob) return;
  try {
    const job = await client[action](currentJob.id);
    if (action === "retryJob" || !isTerminal(job)) watch(job);
    else render(job);
    refreshRecent();
  } catch (error) {
    $("job-error").hidden = false;
    $("job-error").textContent = error.message;
  }
}

// -- recent jobs ----------------------------------------------------------------------

async function refreshRecent() {
  let page;
  try {
    page = await client.listJobs({ limit: 10 });
  } catch (error) {
    if (error.status === 401 && (config.auth === "token" || !config.supabaseUrl)) {
      signOut("The token was refused (expired, or made for another database): paste a fresh one.");
    } else {
      $("auth-status").textContent = error.message;
    }
    return;
  }
  const body = $("recent").querySelector("tbody");
  body.replaceChildren(
    ...page.jobs.map((job) => {
      const row = document.createElement("tr");
      const open = Object.assign(document.createElement("button"), { type: "button", textContent: "Open" });
      open.setAttribute("aria-label", `Open ${job.job_type} job created ${new Date(job.created_at).toLocaleString()}`);
      open.onclick = () => watch(job);
      const cells = [new Date(job.created_at).toLocaleTimeString(), job.job_type, job.status, `${job.progress}%`];
      row.append(...cells.map((text) => Object.assign(document.createElement("td"), { textContent: text })));
      const cell = document.createElement("td");
      cell.append(open);
      row.append(cell);
      return row;
    }),
  );
}

// -- start ----------------------------------------------------------------------------

async function start() {
  await connect();
  jobTypes = (await client.listJobTypes()).job_types;
  const select = $("job-type");
  select.replaceChildren(...jobTypes.map((t) => Object.assign(document.createElement("option"), { value: t.type, textContent: t.type })));
  select.value = jobTypes.some((t) => t.type === "example.countdown") ? "example.countdown" : jobTypes[0]?.type;
  select.onchange = renderForm;
  renderForm();
  $("job-form").onsubmit = submit;
  $("cancel").onclick = () => act("cancelJob");
  $("retry").onclick = () => act("retryJob");
  $("refresh").onclick = refreshRecent;
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  $("auth-status").textContent = `Could not start: ${error.message}`;
});
