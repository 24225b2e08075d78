-- FIX: give public.sponsor_connections.id a working sequence again.
-- Repairs "null value in column "id" ... violates not-null constraint" (no default) and
-- "duplicate key value violates unique constraint" (sequence behind the data).
-- Idempotent, no data loss. Reverted by rollback_sponsor_connections_sequence.sql.
-- Stop the application first (no writes while the next value is computed).
-- No BEGIN/COMMIT here: the caller decides the transaction (psql: use --single-transaction).

CREATE SEQUENCE IF NOT EXISTS public.sponsor_connections_id_seq AS bigint;

-- OWNED BY ties the sequence to the column: pg_get_serial_sequence() finds it and
-- dropping the table drops it.
ALTER SEQUENCE public.sponsor_connections_id_seq OWNED BY public.sponsor_connections.id;

ALTER TABLE public.sponsor_connections
  ALTER COLUMN id SET DEFAULT nextval('public.sponsor_connections_id_seq'::regclass);

GRANT USAGE, SELECT ON SEQUENCE public.sponsor_connections_id_seq
  TO authenticated, service_role;

-- The next id handed out is one past the largest id in the table (1 when it is empty).
SELECT setval(pg_get_serial_sequence('public.sponsor_connections', 'id'),
              COALESCE(MAX(id), 0) + 1, false) AS next_id
FROM public.sponsor_connections;
