"""A fingerprint of a database: every table's row count and content checksum, every
sequence's position, every column default. Taken before and after a step, it proves
"nothing changed" (review mode, refused runs) or shows exactly what did."""

from __future__ import annotations

import psycopg
from psycopg import sql

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


def table_checksum(conn: psycopg.Connection, schema: str, name: str) -> tuple[int, str]:
    """(row count, md5 of the rows in a stable order) for one table.

    Rows are ordered by their text form, so the checksum does not depend on physical
    order (a restored table hashes like the original)."""
    query = sql.SQL(
        "SELECT count(*), coalesce(md5(string_agg(r::text, E'\\n' ORDER BY r::text)), '') "
        "FROM {} AS r"
    ).format(sql.Identifier(schema, name))
    count, digest = conn.execute(query).fetchone()
    return count, digest


def database_fingerprint(conn: psycopg.Connection) -> dict[str, object]:
    """Tables (count, checksum), sequences (last_value, is_called) and column defaults of
    every user schema. Read-only."""
    tables = conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%'
        ORDER BY 1, 2
        """,
        (list(SYSTEM_SCHEMAS),),
    ).fetchall()
    sequences = conn.execute(
        """
        SELECT schemaname, sequencename FROM pg_sequences
        WHERE schemaname <> ALL(%s) ORDER BY 1, 2
        """,
        (list(SYSTEM_SCHEMAS),),
    ).fetchall()
    fingerprint: dict[str, object] = {}
    for schema, name in tables:
        fingerprint[f"table {schema}.{name}"] = table_checksum(conn, schema, name)
    for schema, name in sequences:
        row = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
        ).fetchone()
        fingerprint[f"sequence {schema}.{name}"] = tuple(row)
    for schema, table, column, default in conn.execute(
        """
        SELECT table_schema, table_name, column_name, column_default
        FROM information_schema.columns
        WHERE table_schema <> ALL(%s) AND column_default IS NOT NULL ORDER BY 1, 2, 3
        """,
        (list(SYSTEM_SCHEMAS),),
    ):
        fingerprint[f"default {schema}.{table}.{column}"] = default
    return fingerprint
