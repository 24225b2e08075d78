"""An export read back: its CSV files imported into tables (review mode shows the very
COPY statements), and a table hashed the way the export wrote it, without writing a file,
so that a re-import proves the table holds the file."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg import sql

from .db.names import QualifiedName
from .exports import CHUNK, OUTPUT_SETTINGS, copy_out
from .progress import progress_bar, show_rows


def csv_columns(path: Path) -> list[str]:
    """The column names in a CSV export's header line."""
    with open(path, "rb") as handle:
        header = handle.readline()
    return next(iter(_csv_rows(header)))


def import_statement(table: QualifiedName, columns: Sequence[str]) -> sql.Composed:
    """The COPY ... FROM STDIN statement :func:`import_csv` runs (review mode shows it)."""
    return sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER)").format(
        table.identifier, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )


def import_csv(conn: psycopg.Connection, table: QualifiedName, path: Path,
               *, show_progress: bool = False, expected_rows: int | None = None) -> int:
    """COPY a CSV export (with header) back into ``table`` in the current transaction;
    returns the rows loaded. Columns are matched by the header's names. The progress bar
    shows bytes sent and, from the manifest's ``expected_rows``, about how many rows."""
    copy = import_statement(table, csv_columns(path))
    size = path.stat().st_size
    with conn.cursor() as cur, open(path, "rb") as handle, \
            progress_bar(size, str(table), show_progress) as bar:
        with cur.copy(copy) as copying:
            for block in iter(lambda: handle.read(CHUNK), b""):
                copying.write(block)
                bar.update(len(block))
                if expected_rows:
                    show_rows(bar, expected_rows * bar.n // max(size, 1), approximate=True)
        return cur.rowcount


def _csv_rows(line: bytes):
    return csv.reader(io.StringIO(line.decode()))


def table_sha256(conn: psycopg.Connection, table: QualifiedName, columns: Sequence[str],
                 settings: dict[str, str] | None = None, *, show_progress: bool = False,
                 expected_bytes: int | None = None) -> tuple[int, int, str]:
    """(rows, bytes, SHA-256) of the table's CSV as :func:`export_tables` would write it,
    columns in ``columns`` order, in the current transaction, without writing a file.

    Rows come in physical order (synchronized scans off), which for a table just filled
    by one COPY is the file's order: equal hashes prove the table holds the file."""
    for name, value in (settings or {}).items():
        if name in OUTPUT_SETTINGS:
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
    conn.execute("SELECT set_config('synchronize_seqscans', 'off', true)")
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), table.identifier)
    copy = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(query)
    # The export's own reading loop (rows appended to ~1 MiB blocks straight from libpq),
    # hashed without writing a file: a third of the client CPU of reading row by row.
    with progress_bar(expected_bytes, f"proof {table}", show_progress) as bar:
        return copy_out(conn, copy, None, bar)
