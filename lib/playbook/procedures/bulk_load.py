"""Loading tables the way pg_restore does: keys built after the data, no trigger per row.

pg_restore creates a table, copies its rows, then builds its primary key, its indexes
and its foreign keys, each in one pass; no trigger fires while the rows go in. The
recovery (:func:`recovery.bulk_import`) loads into tables the migration's script has
just created, so it sets aside what it can and re-creates it after the COPY. Two things
cannot be set aside without cost:

- a primary or unique key that a foreign key of *another* table relies on (dropping it
  would drop that foreign key): such a key stays, and is maintained row by row;
- a foreign key into a table that is not loaded (``public.profiles``): dropping it drops
  its triggers on that table, an ACCESS EXCLUSIVE lock that locks logins out until
  COMMIT. It stays; its per-row check (a query and a trigger event per row, two thirds
  of a million-row load) is what :func:`rows_without_row_triggers` skips, when the
  session may set ``session_replication_role`` (a superuser; Supabase grants it to
  ``postgres``). :func:`check_kept_foreign_keys` then does what ``ALTER TABLE ... ADD
  FOREIGN KEY`` does after pg_restore's load: one anti-join per foreign key, the
  referenced rows locked ``FOR KEY SHARE`` first, as the per-row check would have left
  them, so they cannot be deleted before COMMIT.

Without that setting the load runs with its triggers, as before: slower, same result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from ..errors import VerificationFailed

# Primary keys and unique constraints that can be set aside for the load: on an
# ordinary table, nothing depending on them but the foreign keys of ``%(set_aside)s``
# (which are dropped first), not the table's CLUSTER or replica identity index, no
# comment, in the default tablespace, no per-column statistics target.
_KEYS = """
SELECT 'key', n.nspname, t.relname, con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_index x ON x.indexrelid = con.conindid
JOIN pg_class i ON i.oid = x.indexrelid
WHERE con.contype IN ('p', 'u') AND con.conrelid = ANY(%(tables)s) AND con.conparentid = 0
  AND t.relkind = 'r' AND NOT t.relispartition
  AND NOT x.indisclustered AND NOT x.indisreplident AND i.reltablespace = 0
  AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f'
                  AND f.conindid = con.conindid AND f.oid <> ALL(%(set_aside)s))
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = x.indexrelid
                  AND NOT (d.classid = 'pg_constraint'::regclass
                           AND d.objid = ANY(%(set_aside)s)))
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.refclassid = 'pg_constraint'::regclass AND d.refobjid = con.oid
                  AND d.deptype <> 'i'
                  AND NOT (d.classid = 'pg_constraint'::regclass
                           AND d.objid = ANY(%(set_aside)s)))
  AND NOT EXISTS (SELECT 1 FROM pg_description ds
                  WHERE ds.classoid IN ('pg_constraint'::regclass, 'pg_class'::regclass)
                  AND ds.objoid IN (con.oid, x.indexrelid))
  AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = x.indexrelid AND a.attstattarget >= 0)
ORDER BY 2, 3, 4
"""


def key_rows(conn: psycopg.Connection, table_oids: list[int], foreign_keys_set_aside:
             list[tuple[str, str, str]]) -> list[tuple]:
    """(kind, schema, table, name, definition) of the primary and unique keys of the
    tables that a load may drop and re-create, given the foreign keys (schema, table,
    name) set aside with them (those may rely on a key; nothing else may)."""
    oids = [conn.execute(
        "SELECT c.oid FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = %s AND t.relname = %s AND c.conname = %s", key).fetchone()[0]
        for key in foreign_keys_set_aside]
    return conn.execute(_KEYS, {"tables": table_oids, "set_aside": oids}).fetchall()


@contextmanager
def rows_without_row_triggers(conn: psycopg.Connection, table_oids: list[int]
                              ) -> Iterator[bool]:
    """For the COPY inside: ``session_replication_role = replica`` (no trigger and no
    foreign-key check per row, as in pg_restore's data section), set for this transaction
    only and put back after. Yields whether it is in effect: False when the session may
    not set it, or a table has a trigger that fires only in replica mode (it would fire
    here and nowhere else). The caller must then call :func:`check_kept_foreign_keys`."""
    replica_only = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = ANY(%s) AND tgenabled = 'R'",
        (table_oids,)).fetchone()[0]
    previous = conn.execute("SELECT current_setting('session_replication_role')").fetchone()[0]
    bypassed = False
    if not replica_only and previous == "origin":
        try:
            with conn.transaction():  # a savepoint: a refusal leaves the transaction sound
                conn.execute("SELECT set_config('session_replication_role', 'replica', true)")
            bypassed = True
        except pgerrors.InsufficientPrivilege:
            bypassed = False
    try:
        # A session already in replica mode skips the per-row checks too: check after.
        yield bypassed or previous == "replica"
    finally:
        if bypassed and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            conn.execute("SELECT set_config('session_replication_role', %s, true)",
                         (previous,))


@dataclass(frozen=True)
class KeptForeignKey:
    """A foreign key of a loaded table that stayed in place during the load."""

    schema: str
    table: str
    name: str
    columns: list[str]
    ref_schema: str
    ref_table: str
    ref_columns: list[str]
    ref_partitioned: bool
    match_full: bool

    def _pairs(self) -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("p.{} = c.{}").format(sql.Identifier(r), sql.Identifier(c))
            for c, r in zip(self.columns, self.ref_columns, strict=True))

    def _referenced(self) -> sql.Composable:
        # A partitioned table is read whole; an inheritance parent alone (as its RI does).
        only = sql.SQL("" if self.ref_partitioned else "ONLY ")
        return only + sql.Identifier(self.ref_schema, self.ref_table)

    def lock_statement(self) -> sql.Composed:
        """Lock every referenced row the loaded rows point at, FOR KEY SHARE (what the
        per-row check does), so none can be deleted or re-keyed before COMMIT; returns
        (distinct keys the loaded rows hold, referenced rows locked), in one pass over the
        loaded table. The referenced key is unique, so equal counts mean every key has
        its row."""
        cols = [sql.Identifier("c", c) for c in self.columns]
        all_set = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(c) for c in cols)
        return sql.SQL(
            "WITH keys AS MATERIALIZED (SELECT DISTINCT {} FROM ONLY {} AS c WHERE {}), "
            "locked AS (SELECT 1 FROM {} AS p WHERE EXISTS (SELECT 1 FROM keys AS c "
            "WHERE {}) FOR KEY SHARE OF p) "
            "SELECT (SELECT count(*) FROM keys), (SELECT count(*) FROM locked)"
        ).format(sql.SQL(", ").join(cols), sql.Identifier(self.schema, self.table), all_set,
                 self._referenced(), self._pairs())

    def violation_statement(self) -> sql.Composed:
        """The first loaded row the foreign key refuses (its key as text), if any: one
        anti-join, like ALTER TABLE ... ADD FOREIGN KEY's validation."""
        cols = [sql.Identifier("c", c) for c in self.columns]
        all_set = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(c) for c in cols)
        missing = sql.SQL("({}) AND NOT EXISTS (SELECT 1 FROM {} AS p WHERE {})").format(
            all_set, self._referenced(), self._pairs())
        if self.match_full and len(cols) > 1:  # MATCH FULL: all null or none
            some_null = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(c) for c in cols)
            missing = sql.SQL("({}) OR (({}) AND NOT ({}))").format(
                missing, some_null, sql.SQL(" AND ").join(
                    sql.SQL("{} IS NULL").format(c) for c in cols))
        shown = sql.SQL(" || ', ' || ").join(
            sql.SQL("coalesce({}::text, 'NULL')").format(c) for c in cols)
        return sql.SQL("SELECT {} FROM ONLY {} AS c WHERE {} LIMIT 1").format(
            shown, sql.Identifier(self.schema, self.table), missing)


_KEPT_FOREIGN_KEYS = """
SELECT n.nspname, t.relname, con.conname,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(attnum, o)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
             ORDER BY k.o),
       rn.nspname, r.relname,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(attnum, o)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
             ORDER BY k.o),
       r.relkind = 'p', con.confmatchtype = 'f'
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_class r ON r.oid = con.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
WHERE con.contype = 'f' AND con.conrelid = ANY(%s)
ORDER BY 1, 2, 3
"""


def kept_foreign_keys(conn: psycopg.Connection, table_oids: list[int]) -> list[KeptForeignKey]:
    """Every foreign key the loaded tables hold now (call it before the set-aside ones
    are re-created: those are validated by their ADD CONSTRAINT)."""
    return [KeptForeignKey(*row) for row in conn.execute(_KEPT_FOREIGN_KEYS, (table_oids,))]


def check_kept_foreign_keys(conn: psycopg.Connection, keys: list[KeptForeignKey]) -> None:
    """After a load without per-row checks: lock the referenced rows and prove every row
    has its referenced row, per foreign key; VerificationFailed naming the constraint and
    the first key without one (the caller's transaction then rolls back)."""
    # RLS on a referenced table must not hide rows from the check: with row_security off
    # a query it would filter fails instead (then the transaction rolls back, nothing kept).
    previous = conn.execute("SELECT current_setting('row_security')").fetchone()[0]
    conn.execute("SELECT set_config('row_security', 'off', true)")
    try:
        for key in keys:
            distinct, locked = conn.execute(key.lock_statement()).fetchone()
            # Only when a key lacks its row (or MATCH FULL may find half-null keys) is
            # the table read again, for the first row to name.
            if distinct == locked and not (key.match_full and len(key.columns) > 1):
                continue
            row = conn.execute(key.violation_statement()).fetchone()
            if row is not None:
                raise VerificationFailed(
                    f"The exported rows break constraint {key.name} of table "
                    f"{key.schema}.{key.table} while checking its foreign key: key "
                    f"({', '.join(key.columns)})=({row[0]}) is not present in table "
                    f"{key.ref_schema}.{key.ref_table}. The transaction was rolled back; "
                    "nothing was re-applied.",
                    next_step="the referenced rows were deleted since the export, or the "
                    "export was edited: restore those rows (or recover from a backup) first.")
    finally:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            conn.execute("SELECT set_config('row_security', %s, true)", (previous,))
