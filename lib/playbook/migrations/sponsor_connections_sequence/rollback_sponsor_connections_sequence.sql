-- ROLLBACK: reset the sequence of public.sponsor_connections.id to a safe value.
-- NO DATA LOSS. Safe to run many times. Only the sequence's position changes.
-- Stop the application first (no writes while the next value is computed).
-- It cannot restore a missing column default (inserts failing with a not-null
-- violation on id): run fix_sponsor_connections_sequence.sql for that.

-- setval() ignores a NULL sequence, so without this check a column that owns no
-- sequence would make the reset below a silent no-op.
DO $$
BEGIN
  IF pg_get_serial_sequence('public.sponsor_connections', 'id') IS NULL THEN
    RAISE EXCEPTION 'public.sponsor_connections.id owns no sequence; nothing was reset'
      USING HINT = 'Run fix_sponsor_connections_sequence.sql to recreate it.';
  END IF;
END
$$;

-- The next id handed out is one past the largest id in the table (1 when it is empty).
SELECT setval(pg_get_serial_sequence('public.sponsor_connections', 'id'),
              COALESCE(MAX(id), 0) + 1, false) AS next_id
FROM public.sponsor_connections;
