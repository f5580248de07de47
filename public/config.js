// Demo console settings for a deployment (and `ai-jobs serve`). `ai-jobs dev`
// does not read this file: it serves its own /config.js pointing at its local
// Supabase edge (Realtime) and at supabase-js from public/node_modules.
// Leave supabaseUrl empty for token + polling. For a deployed project, set your
// Supabase URL and anon (publishable) key: the console then signs users in with
// Supabase Auth and follows jobs over Realtime, with supabase-js loaded from
// supabaseJsUrl (a CDN, as below, or your own copy of dist/umd/supabase.js).
window.AI_JOBS_CONFIG = {
  supabaseUrl: "",
  supabaseAnonKey: "",
  supabaseJsUrl: "https://cdn.jsdelivr.net/npm/@supabase/supabase-js@2.119.1/dist/umd/supabase.js",
  // apiBaseUrl: "",        // where /api lives when it is not this origin
  // statusVia: "broadcast", // job status over the private Broadcast channel (after
  //                           // `select public.ai_jobs_status_broadcast_v1(true)`); default postgres_changes
};
