// A minimal host app for the useAiJob test: React comes from this folder's
// node_modules (the "host"), the hook and client from public/.
import { createRoot } from "react-dom/client";
import { createAiJobsClient } from "../../../public/ai-jobs.js";
import { useAiJob } from "../../../public/ai-jobs-react.js";

const params = new URLSearchParams(location.hash.slice(1));
const client = createAiJobsClient({ getAccessToken: () => params.get("token"), pollInterval: 200 });
window.hookStates = [];

function JobView({ jobId }) {
  const { job, status, progress, message, result, error, cancel, retry } = useAiJob(jobId, { client });
  window.hookStates.push({ status, progress });
  return (
    <div>
      <p id="status">{status}</p>
      <progress id="progress" max="100" value={progress} />
      <p id="message">{message}</p>
      <p id="attempts">{job ? job.attempts : ""}</p>
      <pre id="result">{result ? JSON.stringify(result) : ""}</pre>
      <p id="error">{error ? error.message || String(error) : ""}</p>
      <button id="cancel" onClick={() => cancel()}>Cancel</button>
      <button id="retry" onClick={() => retry()}>Retry</button>
    </div>
  );
}

createRoot(document.getElementById("root")).render(<JobView jobId={params.get("job")} />);
window.appReady = true;
