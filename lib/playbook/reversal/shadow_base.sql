-- What a new Supabase project holds before its first migration, beyond the auth and storage
-- tables of ../supabase_base.sql and the extensions scratch_servers.prepare_database makes:
-- the API roles' grants, the empty Realtime publication and the default privileges
-- Supabase gives them. The shadow database (the state before a migration) is this base plus
-- every earlier migration, as `supabase db diff` builds its own. Idempotent; no
-- BEGIN/COMMIT (the caller owns the transaction).

-- The API roles themselves are created by shadow.apply_base as placeholders, removed with
-- the shadow databases (roles are cluster-wide: none is left behind on the scratch server).

GRANT USAGE ON SCHEMA extensions TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;

GRANT USAGE ON SCHEMA storage TO anon, authenticated, service_role;
GRANT ALL ON storage.buckets, storage.objects TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.jwt() TO anon, authenticated, service_role;
ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'supabase_realtime') THEN
    CREATE PUBLICATION supabase_realtime;
  END IF;
END
$$;

-- Supabase grants the API roles everything the project owner creates in public; policies
-- (RLS) are what restrict them.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
