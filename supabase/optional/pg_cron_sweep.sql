-- Optional: run the sweep every minute from the database (pg_cron + pg_net),
-- for plans where Vercel Cron is too coarse (Hobby: once a day).
--
-- Not part of supabase/migrations on purpose: it needs your deployment URL and
-- CRON_SECRET. Enable the pg_cron and pg_net extensions (Dashboard > Database >
-- Extensions), store the two values in Vault, then run this file in the SQL editor:
--
--   select vault.create_secret('https://your-app.vercel.app', 'ai_jobs_app_url');
--   select vault.create_secret('<the CRON_SECRET set in Vercel>', 'ai_jobs_cron_secret');
--
-- Re-running it replaces the schedule (cron.schedule upserts by job name).
-- Remove it with: select cron.unschedule('ai-jobs-sweep');

create extension if not exists pg_cron;
create extension if not exists pg_net;

select cron.schedule(
  'ai-jobs-sweep',
  '* * * * *',
  $job$
    select net.http_get(
      url := (select decrypted_secret from vault.decrypted_secrets where name = 'ai_jobs_app_url')
             || '/api/internal/sweep',
      headers := jsonb_build_object(
        'Authorization',
        'Bearer ' || (select decrypted_secret from vault.decrypted_secrets where name = 'ai_jobs_cron_secret')
      ),
      timeout_milliseconds := 5000
    );
  $job$
);
