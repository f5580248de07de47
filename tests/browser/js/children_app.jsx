// useAiJob's children counts for a parent job (tests/browser/test_workflow_browser.py).
import { createRoot } from "react-dom/client";
import { createAiJobsClient } from "../../../public/ai-jobs.js";
import { useAiJob } from "../../../public/ai-jobs-react.js";

const params = new URLSearchParams(location.hash.slice(1));
const client = createAiJobsClient({ getAccessToken: () => params.get("token") });
window.childStates = [];

function Parent({ jobId }) {
  const { status, progress, message, children } = useAiJob(jobId, { client });
  window.childStates.push({ status, progress, children });
  return (
    <div>
      <p id="status">{status}</p>
      <p id="message">{message}</p>
      <p id="children">{children ? `${children.done} of ${children.total} done` : ""}</p>
      <progress id="progress" max="100" value={progress} />
    </div>
  );
}

createRoot(document.getElementById("root")).render(<Parent jobId={params.get("job")} />);
window.appReady = true;
