// The demo console: a job form generated from GET /api/job-types, a live
// progress view, cancel/retry, and the user's recent jobs. Works against
// `ai-jobs dev` (token + polling) and a deployed project (Supabase sign-in +
// Realtime), chosen by config.js.
import { createAiJobsClient, isTerminal } from "./ai-jobs.js";

const config = window.AI_JOBS_CONFIG || {};
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "ai-jobs-demo-token";

let client = null;
let jobTypes = [];
let stopWatching = null;
let currentJob = null;

// -- connection ---------------------------------------------------------------------

async function loadSupabase() {
  if (!window.supabase) {
    await new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = config.supabaseJsUrl || "https://cdn.jsdelivr.net/npm/@supabase/supabase-js@2/dist/umd/supabase.js";
      script.onload = resolve;
      script.onerror = () => reject(new Error(`could not load supabase-js from ${script.src}`));
      document.head.append(script);
    });
  }
  return window.supabase.createClient(config.supabaseUrl, config.supabaseAnonKey);
}

async function connect() {
  if (config.supabaseUrl && config.supabaseAnonKey) {
    const supabase = await loadSupabase();
    client = createAiJobsClient({ baseUrl: config.apiBaseUrl || "", supabase });
    const { data } = await supabase.auth.getSession();
    showLogin(supabase, data.session);
    supabase.auth.onAuthStateChange((_event, session) => showLogin(supabase, session));
  } else {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.get("token")) {
      sessionStorage.setItem(TOKEN_KEY, params.get("token"));
      history.replaceState(null, "", location.pathname);
    }
    client = createAiJobsClient({
      baseUrl: config.apiBaseUrl || "",
      getAccessToken: () => sessionStorage.getItem(TOKEN_KEY),
      pollInterval: config.pollInterval || 1000,
    });
    showTokenForm();
  }
}

function showTokenForm() {
  const form = $("token-form");
  form.hidden = false;
  const signedIn = Boolean(sessionStorage.getItem(TOKEN_KEY));
  $("auth-status").textContent = signedIn ? "Using the saved token." : "Paste a token to start.";
  form.onsubmit = (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("auth-status").textContent = "Using the saved token.";
    refreshRecent();
  };
  if (signedIn) refreshRecent();
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
  const labels = { realtime: "live (Realtime)", polling: "polling", "polling-fallback": "polling (Realtime reconnecting)" };
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

function watch(job) {
  if (stopWatching) stopWatching();
  render(job);
  stopWatching = client.watchJob(job.id, {
    onUpdate: render,
    onDone: () => refreshRecent(),
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
    $("auth-status").textContent = error.status === 401 ? "The token was refused; paste a fresh one." : error.message;
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
