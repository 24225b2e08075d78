"""Diff chosen tables between a restored backup (the scratch database) and live.

Both sides are read with server-side cursors ordered by the primary key and merged in
Python, so only one batch of rows is ever held in memory, whatever the table's size. A
row's content is compared by ``md5`` of its text form, computed by each server. Every
row is one of: deleted since the backup (only in the backup), changed (same key,
different hash), added since (only live) or unchanged. Deleted and changed rows (the
backup's values, and live's current values of the changed ones) and added rows are
exported to CSV, batch by batch, with counts and SHA-256 in a manifest: the record of
what the repair would bring back and what it leaves alone.

A table without a primary key cannot be matched row by row: it gets a whole-table
comparison (count and checksum) and says so.
"""

from __future__ import annotations

import csv
import hashlib
import io
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from ..db import catalog
from ..db.fingerprint import table_checksum
from ..db.names import QualifiedName, parse_table_name
from ..errors import ObjectNotFound, PreconditionFailed
from ..evidence import Evidence, export_evidence
from ..exports import ExportedFile, Manifest, write_manifest
from ..progress import progress_bar, show_megabytes
from . import diff_blocks

BATCH = 5_000
TICK_ROWS = 50_000  # rows between two progress updates of the row-by-row merge
ITERSIZE = 20_000
SAMPLE = 5
DELETED, CHANGED, ADDED = "deleted", "changed", "added"
# Key types whose order in Python equals PostgreSQL's; text-like keys are ordered with
# COLLATE "C" (byte order of UTF-8 = Python's code point order); anything else by its text.
NATIVE_KEY_TYPES = {"int2", "int4", "int8", "numeric", "uuid", "date", "timestamp",
                    "timestamptz", "oid", "bool", "float4", "float8"}
TEXT_KEY_TYPES = {"text", "varchar", "bpchar", "name"}
# Text forms must not depend on a session's settings, or equal rows would hash apart.
COMPARABLE_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
                       "extra_float_digits": "3", "bytea_output": "hex"}


# Columns that say when a row was last written, in order of preference (an application's
# convention; a trigger or the application keeps them).
MODIFIED_COLUMNS = ("updated_at", "modified_at", "last_modified_at", "last_modified",
                    "last_updated_at", "last_updated", "changed_at", "edited_at", "updated",
                    "modified")
CHANGED_AFTER = "changed after the backup"


def make_comparable(conn: psycopg.Connection) -> None:
    """Session settings under which both servers print a row the same way."""
    for name, value in COMPARABLE_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


# --- what is compared ---------------------------------------------------------------


@dataclass
class KeyColumn:
    name: str
    type_name: str  # pg_type.typname, e.g. int8
    sql_type: str  # format_type, e.g. bigint

    @property
    def as_text(self) -> bool:
        return self.type_name not in NATIVE_KEY_TYPES | TEXT_KEY_TYPES

    def select(self, alias: str = "") -> sql.Composable:
        column = sql.Identifier(alias, self.name) if alias else sql.Identifier(self.name)
        return sql.SQL("{}::text").format(column) if self.as_text else column

    def order(self) -> sql.Composable:
        column = sql.Identifier(self.name)
        if self.as_text:
            return sql.SQL('{}::text COLLATE "C"').format(column)
        if self.type_name in TEXT_KEY_TYPES:
            return sql.SQL('{} COLLATE "C"').format(column)
        return column


@dataclass
class TableShape:
    """A table as both sides have it: key, compared columns, notes for the operator."""

    table: QualifiedName
    key: list[KeyColumn]
    columns: list[str]  # compared (and restorable) columns, in the backup's order
    identity_always: bool = False
    notes: list[str] = field(default_factory=list)
    modified_column: str = ""  # live's updated_at-like column, "" when it has none

    @property
    def has_key(self) -> bool:
        return bool(self.key)

    @property
    def key_names(self) -> list[str]:
        return [k.name for k in self.key]

    def column_list(self, alias: str = "") -> sql.Composable:
        return sql.SQL(", ").join(
            sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in self.columns)

    def stream_query(self) -> sql.Composable:
        """Keys and row hash, in key order (what the merge reads from each side)."""
        row = sql.SQL("ROW({})").format(self.column_list())
        return sql.SQL("SELECT {}, md5({}::text) FROM {} ORDER BY {}").format(
            sql.SQL(", ").join(k.select() for k in self.key), row, self.table.identifier,
            sql.SQL(", ").join(k.order() for k in self.key))

    def rows_by_key_query(self, columns: sql.Composable | None = None) -> sql.Composable:
        """The rows whose keys are given as text arrays (one per key column), ``%s``."""
        keys = sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in self.key)
        names = sql.SQL(", ").join(sql.Identifier(f"k{i}") for i in range(len(self.key)))
        match = sql.SQL(" AND ").join(
            sql.SQL("{} = k.{}").format(k.select("t"), sql.Identifier(f"k{i}")) if k.as_text
            else sql.SQL("{} = k.{}::{}").format(sql.Identifier("t", k.name),
                                                 sql.Identifier(f"k{i}"), sql.SQL(k.sql_type))
            for i, k in enumerate(self.key))
        return sql.SQL("SELECT {} FROM {} AS t JOIN unnest({}) AS k({}) ON {}").format(
            columns if columns is not None else self.column_list("t"), self.table.identifier,
            keys, names, match)


def _columns(conn: psycopg.Connection, table: QualifiedName) -> list[tuple] | None:
    rows = conn.execute(
        """
        SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod), a.attgenerated,
               a.attidentity
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid
        WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """, (table.schema, table.name)).fetchall()
    return rows or None


def table_shape(scratch: psycopg.Connection, live: psycopg.Connection,
                table: QualifiedName) -> TableShape:
    """How ``table`` is compared; ObjectNotFound if either side lacks it."""
    backup_columns = _columns(scratch, table)
    if backup_columns is None:
        raise ObjectNotFound(
            f"Table {table} is not in the restored backup. Nothing was changed.",
            next_step="check the tables parameter, and that the backup is of this database "
            "(a backup of another database has other tables).")
    live_columns = _columns(live, table)
    if live_columns is None:
        raise ObjectNotFound(
            f"Table {table} is in the backup but not in the live database. Nothing was changed.",
            next_step="a dropped table is not a surgical repair: use the recovery notebook "
            "(21_recover_coaching_tables) or the full restore (30_full_restore).")
    live_by_name = {r[0]: r for r in live_columns}
    notes = []
    columns = []
    for name, _typname, sql_type, generated, _identity in backup_columns:
        if name not in live_by_name:
            notes.append(f"column {name} is only in the backup (not compared)")
        elif generated or live_by_name[name][3]:
            notes.append(f"generated column {name} not compared")
        elif live_by_name[name][2] != sql_type:
            raise PreconditionFailed(
                f"Column {name} of {table} is {sql_type} in the backup but "
                f"{live_by_name[name][2]} live: rows cannot be compared. Nothing was changed.",
                next_step="this table changed shape since the backup; repair it by hand.")
        else:
            columns.append(name)
    for name in live_by_name:
        if name not in {r[0] for r in backup_columns}:
            notes.append(f"column {name} is only live (left as it is)")
    key_names = catalog.primary_key(live, table)
    if key_names and catalog.primary_key(scratch, table) != key_names:
        notes.append("the primary key differs from the backup's; live's is used")
    if any(k not in columns for k in key_names):
        raise PreconditionFailed(
            f"The primary key of {table} ({', '.join(key_names)}) is not in the backup's "
            "columns. Nothing was changed.", next_step="repair this table by hand.")
    key = [KeyColumn(n, live_by_name[n][1], live_by_name[n][2]) for n in key_names]
    if not key:
        notes.append("no primary key: whole-table comparison (count and checksum) only")
    identity_always = any(live_by_name[c][4] == "a" for c in columns)
    modified = next((name for name in MODIFIED_COLUMNS if name in live_by_name
                     and live_by_name[name][1] in ("timestamptz", "timestamp")), "")
    return TableShape(table, key, columns, identity_always, notes, modified)


# --- the merge ------------------------------------------------------------------------


Key = tuple


def stream_keys(conn: psycopg.Connection, shape: TableShape, name: str
                ) -> Iterator[tuple[Key, str]]:
    """(key, row hash) of every row, in key order, through a server-side cursor."""
    with conn.cursor(name=name) as cur:
        cur.itersize = ITERSIZE
        cur.execute(shape.stream_query())
        for row in cur:
            yield tuple(row[:-1]), row[-1]


def key_text(key: Key) -> str:
    return ", ".join(str(v) for v in key)


class KeySink:
    """Receives batches of keys of one kind (export to CSV, stage for the repair).
    ``sessions``: the connections its writes use (sinks on different sessions may be fed
    side by side)."""

    sessions: tuple[psycopg.Connection, ...] = ()

    def write(self, keys: list[Key]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


def key_arrays(keys: Sequence[Key], width: int) -> list[list[str]]:
    """Keys as one text array per key column (how :meth:`rows_by_key_query` takes them)."""
    return [[str(k[i]) for k in keys] for i in range(width)]


class CsvExport(KeySink):
    """Append the rows of each batch of keys, read from ``conn``, to one CSV file."""

    def __init__(self, conn: psycopg.Connection, shape: TableShape, path: Path) -> None:
        self.conn, self.shape, self.path = conn, shape, path
        self.sessions = (conn,)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "wb")
        self.digest = hashlib.sha256()
        self.rows = 0
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(shape.columns)
        self._write(header.getvalue().encode())

    def _write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)

    def write(self, keys: list[Key]) -> None:
        query = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(
            self.shape.rows_by_key_query())
        with self.conn.cursor() as cur:
            with cur.copy(query, key_arrays(keys, len(self.shape.key))) as copying:
                for chunk in copying:
                    self._write(bytes(chunk))
            self.rows += cur.rowcount

    def close(self) -> None:
        self.handle.close()

    def exported(self, folder: Path) -> ExportedFile:
        return ExportedFile(str(self.shape.table), self.shape.table.schema,
                            self.shape.table.name, str(self.path.relative_to(folder)), self.rows,
                            self.path.stat().st_size, self.digest.hexdigest())


class ModifiedAfter(KeySink):
    """Of each batch of changed keys, the rows whose updated_at-like column on live is
    later than the backup: modified after it (the damage, or a legitimate write the
    operator may want to keep)."""

    def __init__(self, live: psycopg.Connection, shape: TableShape, moment: datetime) -> None:
        self.live, self.shape, self.moment = live, shape, moment
        self.sessions = (live,)
        self.rows = 0
        self.samples: list[str] = []

    def write(self, keys: list[Key]) -> None:
        columns = sql.SQL(", ").join(
            [sql.SQL("{}::text AS {}").format(sql.Identifier("t", k.name),
                                             sql.Identifier(f"key{i}"))
             for i, k in enumerate(self.shape.key)]
            + [sql.SQL("{} AS playbook_modified").format(
                sql.Identifier("t", self.shape.modified_column))])
        query = sql.SQL("SELECT * FROM ({}) AS x WHERE x.playbook_modified > %s").format(
            self.shape.rows_by_key_query(columns))
        rows = self.live.execute(query, [*key_arrays(keys, len(self.shape.key)),
                                         self.moment]).fetchall()
        self.rows += len(rows)
        for row in rows[: SAMPLE - len(self.samples)]:
            self.samples.append(", ".join(row[:-1]))


@dataclass
class TableDiff:
    """What differs in one table between the backup and live."""

    shape: TableShape
    backup_rows: int = 0
    live_rows: int = 0
    deleted: int = 0
    changed: int = 0
    added: int = 0
    unchanged: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)
    added_digest: str = ""  # identity of the rows added since the backup (keys + hashes)
    whole_table_equal: bool | None = None  # tables without a primary key
    files: list[ExportedFile] = field(default_factory=list)
    # Changed rows whose updated_at-like column is later than the backup: written since,
    # perhaps legitimately. None when it cannot be told (no such column, no backup time).
    changed_after_backup: int | None = None

    @property
    def table(self) -> QualifiedName:
        return self.shape.table

    @property
    def equal(self) -> bool:
        if not self.shape.has_key:
            return bool(self.whole_table_equal)
        return self.deleted == 0 and self.changed == 0 and self.added == 0

    def as_row(self) -> dict[str, object]:
        keyed = self.shape.has_key
        return {
            "table": str(self.table),
            "compared by": ", ".join(self.shape.key_names) if keyed else "whole table",
            "rows in backup": self.backup_rows, "rows live": self.live_rows,
            "deleted since backup": self.deleted if keyed else None,
            "changed since backup": self.changed if keyed else None,
            "added since backup": self.added if keyed else None,
            "unchanged": self.unchanged if keyed else None,
            "of the changed: modified after the backup": (
                self.changed_after_backup if self.changed_after_backup is not None
                else ("cannot tell (no updated_at-like column)" if keyed and self.changed
                      else None)),
            "result": ("equal" if self.equal else "differs"),
            "notes": "; ".join(self.shape.notes),
        }


def deliver(sinks: dict[str, list[KeySink]], keys: dict[str, np.ndarray], batch: int) -> None:
    """Each sink gets its kind's ``keys`` (one integer column, in key order) in batches.
    When every sink reads or writes one session, the sinks of different sessions are fed
    side by side, a thread per session: fetching a changed row by its key is a random
    lookup on its server, and the backup's and live's servers can do theirs at once."""
    work = [(sink, keys[kind]) for kind in (DELETED, CHANGED, ADDED)
            for sink in sinks.get(kind, []) if len(keys.get(kind, ()))]

    def feed(items: list) -> None:
        for sink, found in items:
            for start in range(0, len(found), batch):
                sink.write([(key,) for key in found[start:start + batch].tolist()])

    groups: dict[int, list] = {}
    for sink, found in work:
        if len(sink.sessions) != 1:
            feed(work)  # a sink that uses both sessions: one at a time, in order
            return
        groups.setdefault(id(sink.sessions[0]), []).append((sink, found))
    *others, first = groups.values() or [[]]
    failures: list[BaseException] = []

    def feed_catching(items: list) -> None:
        try:
            feed(items)
        except BaseException as exc:  # noqa: BLE001 - raised again by the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=feed_catching, args=(items,)) for items in others]
    for thread in threads:
        thread.start()
    feed_catching(first)
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def compare_table(scratch: psycopg.Connection, live: psycopg.Connection, shape: TableShape,
                  sinks: dict[str, list[KeySink]] | None = None,
                  *, batch: int = BATCH, tick: Callable[[int], None] | None = None
                  ) -> TableDiff:
    """Merge both sides by key; hand every batch of deleted/changed/added keys to
    ``sinks``; ``tick`` gets the backup rows merged as it goes (a progress bar). Runs in
    the callers' current transactions."""
    diff = TableDiff(shape, samples={DELETED: [], CHANGED: [], ADDED: []})
    if not shape.has_key:
        diff.backup_rows, backup_sum = table_checksum(scratch, shape.table.schema,
                                                      shape.table.name)
        diff.live_rows, live_sum = table_checksum(live, shape.table.schema, shape.table.name)
        diff.whole_table_equal = (diff.backup_rows, backup_sum) == (diff.live_rows, live_sum)
        return diff
    sinks = sinks or {}
    pending: dict[str, list[Key]] = {DELETED: [], CHANGED: [], ADDED: []}
    added_digest = hashlib.sha256()

    def found(kind: str, key: Key) -> None:
        if len(diff.samples[kind]) < SAMPLE:
            diff.samples[kind].append(key_text(key))
        if sinks.get(kind):
            pending[kind].append(key)
            if len(pending[kind]) >= batch:
                flush(kind)

    def flush(kind: str) -> None:
        if pending[kind]:
            for sink in sinks.get(kind, []):
                sink.write(pending[kind])
            pending[kind] = []

    if diff_blocks.applies(scratch, live, shape):
        # One integer key: hashed on each server, merged in numpy blocks (diff_blocks.py).
        differing = diff_blocks.compare(scratch, live, shape, diff, added_digest, tick)
        for kind, keys in differing.items():
            diff.samples[kind] = [key_text((key,)) for key in keys[:SAMPLE].tolist()]
        deliver(sinks, differing, batch)
        diff.added_digest = added_digest.hexdigest()
        return diff
    backup_rows = stream_keys(scratch, shape, "playbook_diff_backup")
    live_rows = stream_keys(live, shape, "playbook_diff_live")
    b = next(backup_rows, None)
    lv = next(live_rows, None)
    ticked = 0
    while b is not None or lv is not None:
        if tick is not None and diff.backup_rows - ticked >= TICK_ROWS:
            tick(diff.backup_rows - ticked)
            ticked = diff.backup_rows
        if lv is None or (b is not None and b[0] < lv[0]):
            diff.backup_rows += 1
            diff.deleted += 1
            found(DELETED, b[0])
            b = next(backup_rows, None)
        elif b is None or lv[0] < b[0]:
            diff.live_rows += 1
            diff.added += 1
            added_digest.update(f"{key_text(lv[0])}\t{lv[1]}\n".encode())
            found(ADDED, lv[0])
            lv = next(live_rows, None)
        else:
            diff.backup_rows += 1
            diff.live_rows += 1
            if b[1] == lv[1]:
                diff.unchanged += 1
            else:
                diff.changed += 1
                found(CHANGED, b[0])
            b = next(backup_rows, None)
            lv = next(live_rows, None)
    if tick is not None:
        tick(diff.backup_rows - ticked)
    for kind in pending:
        flush(kind)
    diff.added_digest = added_digest.hexdigest()
    return diff


# --- the review step: diff and export ---------------------------------------------------


@contextmanager
def rows_progress(scratch: psycopg.Connection, table: QualifiedName, rows: int | None,
                  description: str, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A bar of the backup rows merged, with the megabytes of the restored table they
    stand for (its size over its rows) and MB/s; None when not shown."""
    if not enabled:
        yield None
        return
    size = scratch.execute(
        "SELECT pg_table_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = "
        "c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (table.schema, table.name)).fetchone()[0]
    per_row = size / rows / 1e6 if rows else 0.0
    with progress_bar(rows, description, True, unit="rows") as bar:
        def tick(merged: int) -> None:
            bar.update(merged)
            if per_row:
                show_megabytes(bar, bar.n * per_row)
        yield tick


@dataclass
class DiffReport:
    """The diff of every chosen table, and where its export went."""

    diffs: list[TableDiff]
    folder: Path | None
    manifest: Manifest | None

    def evidence(self) -> Evidence:
        """The diff's export, while its files match its manifest."""
        return export_evidence(self.folder)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([d.as_row() for d in self.diffs])

    def samples(self) -> pd.DataFrame:
        rows = [{"table": str(d.table), "kind": kind, "key": key}
                for d in self.diffs for kind, keys in d.samples.items() for key in keys]
        return pd.DataFrame(rows, columns=["table", "kind", "key"])

    def files(self) -> pd.DataFrame:
        entries = self.manifest.files if self.manifest else []
        return pd.DataFrame([{"file": f.file, "rows": f.rows, "bytes": f.bytes,
                              "sha256": f.sha256} for f in entries],
                            columns=["file", "rows", "bytes", "sha256"])

    def by_table(self) -> dict[str, TableDiff]:
        return {str(d.table): d for d in self.diffs}


def export_sinks(scratch: psycopg.Connection, live: psycopg.Connection, shape: TableShape,
                 folder: Path) -> dict[str, list[CsvExport]]:
    """CSV files for one table: the backup's deleted and changed rows, live's changed and
    added rows."""
    stem = f"{shape.table.schema}.{shape.table.name}"
    return {
        DELETED: [CsvExport(scratch, shape, folder / f"{stem}.deleted_since_backup.csv")],
        CHANGED: [CsvExport(scratch, shape, folder / f"{stem}.changed.backup_values.csv"),
                  CsvExport(live, shape, folder / f"{stem}.changed.live_values.csv")],
        ADDED: [CsvExport(live, shape, folder / f"{stem}.added_since_backup.csv")],
    }


def list_tables(conn: psycopg.Connection, schemas: Sequence[str]) -> list[QualifiedName]:
    """Every ordinary or partitioned table of ``schemas`` (partitions are read through
    their parent)."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = ANY(%s)
        ORDER BY 1, 2
        """, (list(schemas),)).fetchall()
    return [QualifiedName(s, t) for s, t in rows]


def chosen_tables(scratch: psycopg.Connection, tables: Sequence[str],
                  schemas: Sequence[str]) -> list[QualifiedName]:
    """The ``tables`` parameter parsed (refusing malformed names), or every table of the
    backup's ``schemas`` when it is empty."""
    if tables:
        return list(dict.fromkeys(parse_table_name(t) for t in tables))
    found = list_tables(scratch, schemas)
    if not found:
        raise ObjectNotFound(
            f"The restored backup has no tables in the schemas {', '.join(schemas)}. "
            "Nothing was changed.",
            next_step="check the schemas parameter and that the backup is of this database.")
    return found


def diff_tables(scratch: psycopg.Connection, live: psycopg.Connection,
                tables: Sequence[QualifiedName], folder: Path | None,
                *, progress: Callable[[str], None] | None = None,
                backup_taken_at: datetime | None = None, show_progress: bool = False,
                expected_rows: Mapping[str, int] | None = None) -> DiffReport:
    """Diff ``tables`` in one snapshot of each side; export to ``folder`` (with a
    manifest) when given. With ``backup_taken_at``, changed rows modified after it (by
    the table's updated_at-like column) are counted and sampled. ``show_progress``: a bar
    per table, in rows (of ``expected_rows``, the restore's counts) and MB/s. Read-only
    on both sides."""
    for conn in (scratch, live):
        conn.commit()  # end the caller's read-only look-ups; a snapshot starts below
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        make_comparable(conn)
        conn.commit()
    diffs: list[TableDiff] = []
    manifest = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                            database=live.info.dbname,
                            purpose="31_restore_tables: diff of the backup against live")
    with scratch.transaction(), live.transaction():
        for table in tables:
            if progress:
                progress(str(table))
            shape = table_shape(scratch, live, table)
            sinks = export_sinks(scratch, live, shape, folder) if (
                folder is not None and shape.has_key) else {}
            modified = (ModifiedAfter(live, shape, backup_taken_at) if shape.has_key
                        and shape.modified_column and backup_taken_at is not None else None)
            watched = {**sinks, CHANGED: [*sinks.get(CHANGED, []), modified]} if modified \
                else sinks
            rows = (expected_rows or {}).get(str(table))
            try:
                with rows_progress(scratch, table, rows, f"diff {table}", show_progress
                                   ) as tick:
                    diff = compare_table(scratch, live, shape, watched, tick=tick)
            finally:
                for group in sinks.values():
                    for sink in group:
                        sink.close()
            if modified is not None:
                diff.changed_after_backup = modified.rows
                diff.samples[CHANGED_AFTER] = modified.samples
            if manifest is not None:
                for group in sinks.values():
                    for sink in group:
                        diff.files.append(sink.exported(folder))
                manifest.files.extend(diff.files)
            diffs.append(diff)
    if manifest is not None:
        manifest.extra = {"tables": {str(d.table): d.as_row() for d in diffs}}
        write_manifest(folder, manifest)
    return DiffReport(diffs, folder, manifest)
