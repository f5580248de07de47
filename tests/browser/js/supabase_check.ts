// Compiled with `tsc --noEmit --strict --skipLibCheck` by tests/browser/test_react_hook.py:
// real supabase-js 2 clients fit the `supabase` option, including one made with the
// `accessToken` option (third-party auth). (skipLibCheck: supabase-js's own .d.ts files
// need @types/node; types_check.ts checks public/*.d.ts without it.)
import { createClient } from "@supabase/supabase-js";
import { createAiJobsClient, type AiJobsClient } from "../../../public/ai-jobs";

const thirdParty = createClient("https://example.supabase.co", "anon-key", { accessToken: async () => "jwt" });
const withSession = createClient("https://example.supabase.co", "anon-key");
const clients: AiJobsClient[] = [
  createAiJobsClient({ supabase: thirdParty }),
  createAiJobsClient({ supabase: withSession, getAccessToken: async () => "jwt" }),
];

export { clients };
