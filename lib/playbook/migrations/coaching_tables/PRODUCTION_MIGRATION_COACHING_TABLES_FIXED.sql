-- Coaching tables: sponsor connections, chat messages and memos a practitioner shares
-- with a sponsor. Reverted by rollback_coaching_tables.sql (DESTRUCTIVE).
-- Idempotent: safe to re-apply (Recovery step 1 of the procedure document).
-- No BEGIN/COMMIT here: the caller decides the transaction (psql: use --single-transaction).

-- sponsor_connections.id gets an explicit sequence OWNED BY the column (the "FIXED" in
-- the file name: the first version had no default, so inserts failed with a not-null
-- violation on id; fix_sponsor_connections_sequence.sql repairs such a database).
CREATE SEQUENCE IF NOT EXISTS public.sponsor_connections_id_seq AS bigint;

CREATE TABLE IF NOT EXISTS public.sponsor_connections (
  id bigint PRIMARY KEY DEFAULT nextval('public.sponsor_connections_id_seq'::regclass),
  practitioner_user_id uuid NOT NULL REFERENCES public.profiles (id),
  sponsor_user_id uuid NOT NULL REFERENCES public.profiles (id),
  status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'active', 'ended')),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz
);

ALTER SEQUENCE public.sponsor_connections_id_seq OWNED BY public.sponsor_connections.id;

CREATE TABLE IF NOT EXISTS public.sponsor_chat_messages (
  id bigserial PRIMARY KEY,
  connection_id bigint NOT NULL REFERENCES public.sponsor_connections (id) ON DELETE CASCADE,
  sender_id uuid NOT NULL REFERENCES public.profiles (id),
  body text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  read_at timestamptz
);

CREATE TABLE IF NOT EXISTS public.sponsor_visible_memos (
  id bigserial PRIMARY KEY,
  connection_id bigint NOT NULL REFERENCES public.sponsor_connections (id) ON DELETE CASCADE,
  practitioner_user_id uuid NOT NULL REFERENCES public.profiles (id),
  memo text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz
);

-- PostgreSQL does not index foreign keys by itself; RLS checks and cascades need these.
CREATE INDEX IF NOT EXISTS sponsor_connections_practitioner_user_id_idx
  ON public.sponsor_connections (practitioner_user_id);
CREATE INDEX IF NOT EXISTS sponsor_connections_sponsor_user_id_idx
  ON public.sponsor_connections (sponsor_user_id);
CREATE INDEX IF NOT EXISTS sponsor_chat_messages_connection_id_idx
  ON public.sponsor_chat_messages (connection_id);
CREATE INDEX IF NOT EXISTS sponsor_chat_messages_sender_id_idx
  ON public.sponsor_chat_messages (sender_id);
CREATE INDEX IF NOT EXISTS sponsor_visible_memos_connection_id_idx
  ON public.sponsor_visible_memos (connection_id);
CREATE INDEX IF NOT EXISTS sponsor_visible_memos_practitioner_user_id_idx
  ON public.sponsor_visible_memos (practitioner_user_id);

-- Functions.
CREATE OR REPLACE FUNCTION public.set_sponsor_updated_at() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END
$$;

-- SECURITY DEFINER so that policies calling it do not recurse through the RLS of
-- sponsor_connections; the empty search_path keeps a definer function from being hijacked.
CREATE OR REPLACE FUNCTION public.is_sponsor_of(practitioner uuid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
AS $$
  SELECT EXISTS (
    SELECT 1
    FROM public.sponsor_connections c
    WHERE c.practitioner_user_id = practitioner
      AND c.sponsor_user_id = auth.uid()
      AND c.status = 'active'
  )
$$;

-- Runs as the caller, so RLS limits it to conversations the caller takes part in.
CREATE OR REPLACE FUNCTION public.get_sponsor_chat_unread_count(p_connection_id bigint)
RETURNS bigint
LANGUAGE sql STABLE
AS $$
  SELECT count(*)
  FROM public.sponsor_chat_messages m
  WHERE m.connection_id = p_connection_id
    AND m.read_at IS NULL
    AND m.sender_id IS DISTINCT FROM auth.uid()
$$;

-- Triggers.
DROP TRIGGER IF EXISTS sponsor_connections_set_updated_at ON public.sponsor_connections;
CREATE TRIGGER sponsor_connections_set_updated_at
  BEFORE UPDATE ON public.sponsor_connections
  FOR EACH ROW EXECUTE FUNCTION public.set_sponsor_updated_at();

DROP TRIGGER IF EXISTS sponsor_visible_memos_set_updated_at ON public.sponsor_visible_memos;
CREATE TRIGGER sponsor_visible_memos_set_updated_at
  BEFORE UPDATE ON public.sponsor_visible_memos
  FOR EACH ROW EXECUTE FUNCTION public.set_sponsor_updated_at();

-- Row level security.
ALTER TABLE public.sponsor_connections ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.sponsor_chat_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.sponsor_visible_memos ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS "Participants can view their connections" ON public.sponsor_connections;
CREATE POLICY "Participants can view their connections" ON public.sponsor_connections
  FOR SELECT TO authenticated
  USING (auth.uid() IN (practitioner_user_id, sponsor_user_id));

DROP POLICY IF EXISTS "Practitioners can request a sponsor" ON public.sponsor_connections;
CREATE POLICY "Practitioners can request a sponsor" ON public.sponsor_connections
  FOR INSERT TO authenticated
  WITH CHECK (practitioner_user_id = auth.uid());

DROP POLICY IF EXISTS "Participants can update their connections" ON public.sponsor_connections;
CREATE POLICY "Participants can update their connections" ON public.sponsor_connections
  FOR UPDATE TO authenticated
  USING (auth.uid() IN (practitioner_user_id, sponsor_user_id))
  WITH CHECK (auth.uid() IN (practitioner_user_id, sponsor_user_id));

DROP POLICY IF EXISTS "Participants can read their messages" ON public.sponsor_chat_messages;
CREATE POLICY "Participants can read their messages" ON public.sponsor_chat_messages
  FOR SELECT TO authenticated
  USING (EXISTS (
    SELECT 1 FROM public.sponsor_connections c
    WHERE c.id = connection_id AND auth.uid() IN (c.practitioner_user_id, c.sponsor_user_id)
  ));

DROP POLICY IF EXISTS "Participants can send messages" ON public.sponsor_chat_messages;
CREATE POLICY "Participants can send messages" ON public.sponsor_chat_messages
  FOR INSERT TO authenticated
  WITH CHECK (sender_id = auth.uid() AND EXISTS (
    SELECT 1 FROM public.sponsor_connections c
    WHERE c.id = connection_id AND auth.uid() IN (c.practitioner_user_id, c.sponsor_user_id)
  ));

DROP POLICY IF EXISTS "Recipients can mark messages read" ON public.sponsor_chat_messages;
CREATE POLICY "Recipients can mark messages read" ON public.sponsor_chat_messages
  FOR UPDATE TO authenticated
  USING (EXISTS (
    SELECT 1 FROM public.sponsor_connections c
    WHERE c.id = connection_id AND auth.uid() IN (c.practitioner_user_id, c.sponsor_user_id)
  ));

DROP POLICY IF EXISTS "Practitioners manage their memos" ON public.sponsor_visible_memos;
CREATE POLICY "Practitioners manage their memos" ON public.sponsor_visible_memos
  FOR ALL TO authenticated
  USING (practitioner_user_id = auth.uid())
  WITH CHECK (practitioner_user_id = auth.uid());

DROP POLICY IF EXISTS "Sponsors can read shared memos" ON public.sponsor_visible_memos;
CREATE POLICY "Sponsors can read shared memos" ON public.sponsor_visible_memos
  FOR SELECT TO authenticated
  USING (public.is_sponsor_of(practitioner_user_id));

-- Grants.
GRANT SELECT, INSERT, UPDATE ON public.sponsor_connections, public.sponsor_chat_messages
  TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.sponsor_visible_memos TO authenticated;
GRANT ALL ON public.sponsor_connections, public.sponsor_chat_messages,
  public.sponsor_visible_memos TO service_role;
GRANT USAGE, SELECT ON SEQUENCE public.sponsor_connections_id_seq,
  public.sponsor_chat_messages_id_seq, public.sponsor_visible_memos_id_seq
  TO authenticated, service_role;
GRANT EXECUTE ON FUNCTION public.is_sponsor_of(uuid),
  public.get_sponsor_chat_unread_count(bigint) TO authenticated, service_role;
