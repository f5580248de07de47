// useAiJob against the Realtime test server (tests/browser/test_watch_behaviours.py):
// supabase-js is the UMD build the page loads (window.supabase); React comes from
// this folder's node_modules; "ai-jobs-client" and "ai-jobs-client/react" are
// aliased by esbuild to the client under test, as an app imports the npm package.
import { createRoot } from "react-dom/client";
import { createAiJobsClient } from "ai-jobs-client";
import { useAiJob } from "ai-jobs-client/react";

const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token");
const supabase = window.supabase.createClient(location.origin, "anon-key", { accessToken: async () => token });
const client = createAiJobsClient({ supabase, getAccessToken: () => token, pollInterval: 300, maxPollInterval: 1200 });
window.hookStates = [];

function JobView({ jobId }) {
  const { job, status, progress, message, error, cancel } = useAiJob(jobId, { client });
  window.hookStates.push({ status, progress, error: error ? String(error.message || error) : null });
  return (
    <div>
      <p id="status">{status}</p>
      <progress id="progress" max="100" value={progress} />
      <p id="message">{message}</p>
      <p id="updated">{job ? job.updated_at : ""}</p>
      <p id="error">{error ? error.message || String(error) : ""}</p>
      <button id="cancel" onClick={() => cancel()}>Cancel</button>
    </div>
  );
}

createRoot(document.getElementById("root")).render(<JobView jobId={params.get("job")} />);
window.appReady = true;
