"""A table's rows digested as values on the server: how a re-import is proven cheaply.

Step 1's export records, beside each file's SHA-256, the digest of the rows it wrote:
their count and the sums of the high and low halves of ``hash_record_extended(ROW(columns),
0)`` (the row hash PostgreSQL's hash partitioning relies on, stable across servers and
versions; PostgreSQL 14 and later). It is computed where the rows are, in the export's
snapshot, while pg_dump writes the step's archive (the server has a core to spare then;
see :mod:`procedures.rollback_export`). After the recovery re-imports the file, the same
digest of the table, in the recovery's transaction, proves the table holds the rows that
were exported, without re-reading a million rows as CSV.

Order does not matter and every row counts (a sum, not an XOR: two equal rows do not
cancel out). Values compare as PostgreSQL's hash functions see them: a ``numeric``
written back as 1.00 instead of 1.0 is the same value. A table with a column type that
has no hash function (``json``), or a server older than 14, has no digest; its recovery
is proven by its CSV's SHA-256, as is a table written to between step 1 and the drop.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg import sql

from .db.names import QualifiedName

ALGORITHM = "hre1"  # hash_record_extended(ROW(columns in file order), 0), summed in halves
FIRST_SERVER = 140000  # hash_record_extended appeared in PostgreSQL 14


def columns_of(conn: psycopg.Connection, table: QualifiedName) -> list[str]:
    """The table's columns in their order: what ``SELECT *`` (the export) writes."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
        "AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (table.schema, table.name)).fetchall()
    return [r[0] for r in rows]


def _row(columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))


def digest_query(table: QualifiedName, columns: Sequence[str]) -> sql.Composed:
    """The rows the export's ``SELECT * FROM table`` wrote (partitions and children
    included), counted and summed."""
    return sql.SQL(
        "SELECT count(*), coalesce(sum(h >> 32), 0), coalesce(sum(h & 4294967295), 0) "
        "FROM (SELECT hash_record_extended({}, 0) AS h FROM {}) AS rows").format(
        _row(columns), table.identifier)


def hashable(conn: psycopg.Connection, table: QualifiedName, columns: Sequence[str]) -> bool:
    """Whether every column's type can be hashed (tried on one row, in a savepoint, so a
    refusal leaves the caller's transaction sound). An empty table is hashable: its
    digest hashes nothing."""
    if conn.info.server_version < FIRST_SERVER or not columns:
        return False
    probe = sql.SQL("SELECT hash_record_extended({}, 0) FROM {} LIMIT 1").format(
        _row(columns), table.identifier)
    try:
        with conn.transaction():
            conn.execute(probe)
    except (psycopg.errors.UndefinedFunction, psycopg.errors.FeatureNotSupported):
        return False
    return True


def table_digest(conn: psycopg.Connection, table: QualifiedName, columns: Sequence[str]
                 ) -> str | None:
    """The digest of ``table``'s rows over ``columns``, or None when it cannot be taken."""
    if not hashable(conn, table, columns):
        return None
    rows, high, low = conn.execute(digest_query(table, columns)).fetchone()
    return f"{ALGORITHM}:{rows}:{high}:{low}"


def table_digests(conn: psycopg.Connection, tables: Sequence[QualifiedName]) -> dict[str, str]:
    """Each table's digest over all its columns (what its export file holds), by
    ``schema.name``; a table that cannot have one is left out."""
    digests = {}
    for table in tables:
        digest = table_digest(conn, table, columns_of(conn, table))
        if digest is not None:
            digests[str(table)] = digest
    return digests
