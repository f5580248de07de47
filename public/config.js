// Demo console settings. Leave empty for `ai-jobs dev` (token + polling).
// For a deployed project, set your Supabase URL and anon (publishable) key:
// the console then signs users in with Supabase Auth and follows jobs over Realtime.
window.AI_JOBS_CONFIG = {
  supabaseUrl: "",
  supabaseAnonKey: "",
  // apiBaseUrl: "",        // where /api lives when it is not this origin
  // supabaseJsUrl: "...",  // supabase-js UMD build (default: jsDelivr)
};
