-- ROLLBACK: coaching tables.   WARNING: DESTRUCTIVE, DELETES ALL COACHING DATA.
--
-- As shipped, this script only SHOWS what a rollback would remove: the tables with the
-- rows that would be lost, the functions, and the policies and triggers that go with
-- the tables. It changes nothing.
--
-- To perform the rollback (procedure document, "Rollback Script 2", Step 3): export
-- the data first, then delete the two comment-marker lines around the DROP BLOCK
-- below (the one that opens it and the one that closes it), and run the edited copy, with
-- psql --single-transaction so that a failure leaves everything in place.
--
-- Profiles, virtues, journal entries and auth.users are not touched.

-- 1. Tables that will be dropped.
SELECT t.name AS table_to_drop, to_regclass(t.name) IS NOT NULL AS present
FROM (VALUES ('public.sponsor_connections'),
             ('public.sponsor_chat_messages'),
             ('public.sponsor_visible_memos')) AS t(name);

-- 2. Rows that will be lost, shown as NOTICEs: plain SQL cannot count a table that may
--    be absent (the document's "relation does not exist" issue), and query_to_xml
--    needs a server built with libxml, which pgserver's is not.
DO $$
DECLARE
  table_name text;
  row_count bigint;
BEGIN
  FOREACH table_name IN ARRAY ARRAY['public.sponsor_connections',
                                    'public.sponsor_chat_messages',
                                    'public.sponsor_visible_memos'] LOOP
    IF to_regclass(table_name) IS NULL THEN
      RAISE NOTICE '%: absent, nothing to drop', table_name;
    ELSE
      EXECUTE format('SELECT count(*) FROM %s', to_regclass(table_name)) INTO row_count;
      RAISE NOTICE '%: % rows will be lost', table_name, row_count;
    END IF;
  END LOOP;
END
$$;

-- 3. Functions that will be dropped.
SELECT f.signature AS function_to_drop,
       to_regprocedure(f.signature) IS NOT NULL AS present
FROM (VALUES ('public.set_sponsor_updated_at()'),
             ('public.is_sponsor_of(uuid)'),
             ('public.get_sponsor_chat_unread_count(bigint)')) AS f(signature);

-- 4. Policies and triggers that go with the tables.
SELECT 'policy' AS kind, format('%I.%I', p.schemaname, p.tablename) AS on_table,
       p.policyname AS name
FROM pg_catalog.pg_policies p
WHERE p.schemaname = 'public'
  AND p.tablename IN ('sponsor_connections', 'sponsor_chat_messages', 'sponsor_visible_memos')
UNION ALL
SELECT 'trigger', t.tgrelid::regclass::text, t.tgname
FROM pg_catalog.pg_trigger t
WHERE NOT t.tgisinternal
  AND t.tgrelid IN (to_regclass('public.sponsor_connections'),
                    to_regclass('public.sponsor_chat_messages'),
                    to_regclass('public.sponsor_visible_memos'))
ORDER BY 1, 2, 3;

/* DROP BLOCK: delete this line and the closing line to perform the rollback.
-- Tables are dropped children first and WITHOUT CASCADE: if anything outside the
-- migration (a view, a foreign key) depends on them, the drop fails instead of
-- silently taking that object along.

DROP TRIGGER IF EXISTS sponsor_connections_set_updated_at ON public.sponsor_connections;
DROP TRIGGER IF EXISTS sponsor_visible_memos_set_updated_at ON public.sponsor_visible_memos;

DROP POLICY IF EXISTS "Participants can view their connections" ON public.sponsor_connections;
DROP POLICY IF EXISTS "Practitioners can request a sponsor" ON public.sponsor_connections;
DROP POLICY IF EXISTS "Participants can update their connections" ON public.sponsor_connections;
DROP POLICY IF EXISTS "Participants can read their messages" ON public.sponsor_chat_messages;
DROP POLICY IF EXISTS "Participants can send messages" ON public.sponsor_chat_messages;
DROP POLICY IF EXISTS "Recipients can mark messages read" ON public.sponsor_chat_messages;
DROP POLICY IF EXISTS "Practitioners manage their memos" ON public.sponsor_visible_memos;
DROP POLICY IF EXISTS "Sponsors can read shared memos" ON public.sponsor_visible_memos;

DROP TABLE IF EXISTS public.sponsor_chat_messages;
DROP TABLE IF EXISTS public.sponsor_visible_memos;
DROP TABLE IF EXISTS public.sponsor_connections;
-- Owned by sponsor_connections.id, so normally already gone with the table.
DROP SEQUENCE IF EXISTS public.sponsor_connections_id_seq;

DROP FUNCTION IF EXISTS public.get_sponsor_chat_unread_count(bigint);
DROP FUNCTION IF EXISTS public.is_sponsor_of(uuid);
DROP FUNCTION IF EXISTS public.set_sponsor_updated_at();
*/
