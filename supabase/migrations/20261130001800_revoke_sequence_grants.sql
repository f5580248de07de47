-- Sequences: no grants to browsers.
--
-- Supabase's default privileges for objects `postgres` creates in public give anon and
-- authenticated ALL on every new sequence, as on tables and functions. The earlier
-- migrations revoke those grants table by table and function by function, but the
-- sequence behind ai_jobs_spend.id (an identity column) kept them, so a browser's
-- PostgREST role could read it (nextval, last_value) or move it (setval). No browser
-- needs a sequence: rows are only inserted by the server and by our triggers, and an
-- identity column's sequence needs no privilege of the inserting role.
--
-- Like the earlier lock-downs, this revokes per object and leaves the project's
-- default privileges (which also apply to the host app's own objects in public) alone;
-- a later migration that adds a sequence revokes it likewise
-- (tests/test_security.py::test_no_sequence_usable_by_browser_roles checks every
-- sequence in public). service_role keeps what it has. Safe to run again.
do $revoke_sequences$
declare
  r record;
begin
  for r in
    select c.oid::regclass as seq
    from pg_class c
    where c.relnamespace = 'public'::regnamespace
      and c.relkind = 'S'
      and c.relname like 'ai\_job%'
      and pg_has_role(c.relowner, 'USAGE')  -- ours (owned by the migration role)
  loop
    execute format('revoke all on sequence %s from public, anon, authenticated', r.seq);
  end loop;
end
$revoke_sequences$;
