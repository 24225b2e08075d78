"""The tables a rollback must leave untouched, and the proof that it did.

Before the drop, each protected table's identity (its files, columns and constraints) and,
when the counters cannot tell, its checksum; after the drop, inside the same transaction,
the same read again: anything different (a cascade, a trigger, a concurrent writer the lock
did not stop) fails the verification and the drop is rolled back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from ..changesets.migration import Migration
from ..db.fingerprint import table_checksum
from ..db.names import QualifiedName
from ..verification import Check

if TYPE_CHECKING:  # the drop plan names the constraints it drops on purpose
    from .drops import DropPlan

# In one round trip: the table and its inheritance children / partitions (rows of a
# partitioned table live in its partitions), each with the file holding its rows; its
# columns; its constraints; and what this transaction (savepoints included, even rolled-back
# ones) has inserted, updated and deleted in them so far, from this backend's own pending
# counters. NULL when the table does not exist.
_PROTECTED_IDENTITY = """
WITH RECURSIVE members(oid) AS (
  SELECT to_regclass(%(table)s)::oid
  UNION SELECT i.inhrelid FROM pg_inherits i JOIN members m ON i.inhparent = m.oid
), top AS (SELECT to_regclass(%(table)s)::oid AS oid)
SELECT
  (SELECT array_agg(ARRAY[c.oid::bigint, c.relfilenode::bigint] ORDER BY c.oid)
   FROM members m JOIN pg_class c ON c.oid = m.oid),
  (SELECT array_agg(ARRAY[attname::text, format_type(atttypid, atttypmod), attnotnull::text]
                    ORDER BY attnum)
   FROM pg_attribute, top WHERE attrelid = top.oid AND attnum > 0 AND NOT attisdropped),
  (SELECT array_agg(ARRAY[conname::text, pg_get_constraintdef(pg_constraint.oid)])
   FROM pg_constraint, top WHERE conrelid = top.oid),
  (SELECT ARRAY[coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0),
                coalesce(sum(n_tup_del), 0)]::bigint[]
   FROM pg_stat_xact_all_tables WHERE relid IN (SELECT oid FROM members))
FROM top WHERE top.oid IS NOT NULL
"""


@dataclass(frozen=True)
class ProtectedTable:
    """What a protected table is, from the catalog: its relations and the files holding
    their rows, its columns and constraints, and its row count when first looked at."""

    table: QualifiedName
    relations: tuple[tuple[int, int], ...]  # (oid, relfilenode) of the table and its children
    columns: tuple[tuple[str, str, bool], ...]
    constraints: frozenset[tuple[str, str]]
    rows: int
    checksum: str = ""  # only when track_counts is off (see protected_tables_untouched)


def table_identity(conn: psycopg.Connection, table: QualifiedName):
    """(relations, columns, constraints, (inserted, updated, deleted)) or None if the
    table does not exist."""
    row = conn.execute(_PROTECTED_IDENTITY,
                       {"table": table.identifier.as_string(conn)}).fetchone()
    if row is None:
        return None
    relations, columns, constraints, changed = row
    return (tuple(tuple(r) for r in relations), tuple(tuple(c) for c in columns or ()),
            frozenset(tuple(c) for c in constraints or ()), tuple(changed))


def counts_changes(conn: psycopg.Connection) -> bool:
    """Whether this session counts its row changes (``track_counts``), which the proof of
    :func:`protected_tables_untouched` relies on."""
    return conn.execute("SELECT current_setting('track_counts')::boolean").fetchone()[0]


def protected_state(conn: psycopg.Connection, migration: Migration,
                    *, with_checksums: bool = False) -> dict[str, ProtectedTable]:
    """The migration's protected tables as they are now (missing ones are left out).
    Catalog look-ups and one count(*) each; full checksums only if asked."""
    state = {}
    for table in migration.protected_tables:
        identity = table_identity(conn, table)
        if identity is None:
            continue
        relations, columns, constraints, _changed = identity
        if with_checksums:
            rows, checksum = table_checksum(conn, table.schema, table.name)
        else:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                table.identifier)).fetchone()[0]
            checksum = ""
        state[str(table)] = ProtectedTable(table, relations, columns, constraints, rows,
                                           checksum)
    return state


def _planned_constraint_drops(plan: DropPlan | None) -> set[tuple[str, str, str]]:
    """(schema, table, constraint) the operator named in include_dependents: their
    disappearance from a protected table is the point of the rollback, not damage."""
    if plan is None:
        return set()
    return {tuple(d.object_names[:3]) for d in plan.included
            if d.kind == "table constraint" and len(d.object_names) >= 3}


def protected_tables_untouched(conn: psycopg.Connection, before: dict[str, ProtectedTable],
                               plan: DropPlan | None = None) -> list[Check]:
    """Checks, inside the drop's transaction, that each protected table still holds what
    it held when ``before`` was taken, in catalog look-ups that take milliseconds.

    Why this proves it without reading the rows again: a table's rows can change in only
    two ways. (1) Row by row (INSERT, UPDATE, DELETE, COPY, MERGE, cascades, triggers,
    event triggers): PostgreSQL counts each such change in ``pg_stat_xact_all_tables``
    for the transaction that makes it, including its savepoints, so zero inserted,
    updated and deleted rows means this transaction changed no row. (2) Wholesale
    (TRUNCATE, a rewriting ALTER TABLE, VACUUM FULL, DROP and CREATE): that gives the
    table a new oid or a new file (``relfilenode``) or other columns, all compared here.
    Writes committed meanwhile by the application belong to other transactions and do
    not make the rollback fail, as a re-count would. Constraints the operator named in
    ``include_dependents`` are expected to be gone; any other difference fails.

    With ``track_counts`` off nothing is counted, so the rows themselves are compared
    (``before`` must then hold checksums, see :func:`protected_state`); slow on large
    tables, and said so in the check's name."""
    checks: list[Check] = []
    planned = _planned_constraint_drops(plan)
    counted = counts_changes(conn)
    for name, was in before.items():
        table = was.table
        identity = table_identity(conn, table)
        if identity is None:
            checks.append(Check(f"{name} still exists", False, "missing", "present"))
            continue
        relations, columns, constraints, (inserted, updated, deleted) = identity
        differences = []
        if relations != was.relations:
            differences.append("its storage was replaced (TRUNCATE, rewrite or re-creation)")
        if columns != was.columns:
            differences.append("its columns changed")
        expected = {c for c in was.constraints
                    if (table.schema, table.name, c[0]) not in planned}
        if constraints != expected:
            gone = sorted(c[0] for c in expected - constraints)
            new = sorted(c[0] for c in constraints - expected)
            differences.append("constraints " + ", ".join(
                ([f"lost {', '.join(gone)}"] if gone else [])
                + ([f"gained {', '.join(new)}"] if new else [])))
        checks.append(Check(f"{name}: same table, storage, columns and constraints",
                            not differences, "; ".join(differences) or "unchanged",
                            "unchanged"))
        if counted:
            checks.append(Check(
                f"{name} ({was.rows} rows before): no row inserted, updated or deleted by "
                "this transaction", inserted == updated == deleted == 0,
                f"{inserted} inserted, {updated} updated, {deleted} deleted",
                "0 inserted, 0 updated, 0 deleted"))
        else:
            rows, checksum = table_checksum(conn, table.schema, table.name)
            checks.append(Check(f"{name} rows and checksum unchanged (track_counts is off: "
                                "compared row by row)",
                                (rows, checksum) == (was.rows, was.checksum),
                                f"{rows} rows, {checksum[:12]}",
                                f"{was.rows} rows, {was.checksum[:12]}"))
    return checks
