"""The data a reversal destroys, exported first, and put back by the recovery.

Found by comparing the two shadow states, not by reading the migration's SQL:

- tables the migration created are exported whole (a partitioned table once, through its
  parent, so no row counts twice);
- tables it altered by adding columns are exported whole too: the primary key and the
  added columns are what the recovery writes back;
- what the migration itself dropped (tables, columns) comes back empty: its data exists
  only in a backup or snapshot taken before the migration, and the operator is told so.

The recovery loads each file into a temporary copy of its table, replaces the rows the
migration seeds with the exported ones, writes generated columns by recomputing them (never
by copying), and proves each table equals its export row for row (``EXCEPT ALL`` both ways
on the whole row's text), inside the transaction, before COMMIT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

from ..db.catalog import advance_sequences
from ..db.names import QualifiedName
from ..errors import VerificationFailed
from ..exports import ExportedFile, Manifest
from .schema_diff import MANAGED_SCHEMAS

_TABLES = """
SELECT n.nspname, c.relname, c.relkind = 'p'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname <> ALL(%(managed)s) AND n.nspname NOT LIKE 'pg\\_%%'
"""

_COLUMNS = """
SELECT n.nspname, c.relname, a.attname, a.attgenerated <> ''
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND a.attnum > 0
  AND NOT a.attisdropped AND n.nspname <> ALL(%(managed)s) AND n.nspname NOT LIKE 'pg\\_%%'
ORDER BY n.nspname, c.relname, a.attnum
"""

_PRIMARY_KEY = """
SELECT a.attname
FROM pg_index x
JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey)
WHERE x.indrelid = %s::regclass AND x.indisprimary
ORDER BY array_position(x.indkey::int2[], a.attnum)
"""


def _tables(conn: psycopg.Connection) -> set[QualifiedName]:
    return {QualifiedName(r[0], r[1])
            for r in conn.execute(_TABLES, {"managed": list(MANAGED_SCHEMAS)})}


def _columns(conn: psycopg.Connection) -> dict[QualifiedName, dict[str, bool]]:
    found: dict[QualifiedName, dict[str, bool]] = {}
    for schema, table, column, generated in conn.execute(
            _COLUMNS, {"managed": list(MANAGED_SCHEMAS)}):
        found.setdefault(QualifiedName(schema, table), {})[column] = generated
    return found


@dataclass
class DataAtStake:
    """What the reversal of one migration destroys, and what the migration destroyed."""

    created_tables: list[QualifiedName] = field(default_factory=list)
    added_columns: dict[QualifiedName, list[str]] = field(default_factory=dict)
    dropped_tables: list[QualifiedName] = field(default_factory=list)
    dropped_columns: dict[QualifiedName, list[str]] = field(default_factory=dict)

    @property
    def dropped_by_migration(self) -> list[str]:
        """What the migration itself dropped: its data is only in a backup taken before."""
        return sorted([str(t) for t in self.dropped_tables]
                      + [f"{t}.{c}" for t, cols in self.dropped_columns.items() for c in cols])

    @property
    def tables_to_export(self) -> list[QualifiedName]:
        return [*self.created_tables, *self.added_columns]

    def manifest_extra(self) -> dict:
        """What the recovery needs to know of the export, kept in its manifest."""
        return {"added_columns": {str(t): c for t, c in self.added_columns.items()},
                "created_tables": [str(t) for t in self.created_tables]}

    def table(self) -> pd.DataFrame:
        rows = [(str(t), "table created by the migration", "exported whole, then dropped")
                for t in self.created_tables]
        rows += [(str(t), f"columns added by the migration: {', '.join(cols)}",
                  "table exported whole; the columns dropped")
                 for t, cols in self.added_columns.items()]
        rows += [(what, "dropped BY the migration",
                  "comes back EMPTY unless restore_dropped_data: its data is only in a backup "
                  "or snapshot taken before the migration") for what in self.dropped_by_migration]
        return pd.DataFrame(rows, columns=["object", "what", "what the rollback does"])


def data_at_stake(before: psycopg.Connection, after: psycopg.Connection) -> DataAtStake:
    """Compare the states before and after the migration."""
    tables_before, tables_after = _tables(before), _tables(after)
    columns_before, columns_after = _columns(before), _columns(after)
    stake = DataAtStake(created_tables=sorted(tables_after - tables_before, key=str),
                        dropped_tables=sorted(tables_before - tables_after, key=str))
    for table in sorted(tables_after & tables_before, key=str):
        added = [c for c, generated in columns_after[table].items()
                 if c not in columns_before[table] and not generated]
        if added:
            stake.added_columns[table] = added
        dropped = [c for c, generated in columns_before[table].items()
                   if c not in columns_after[table] and not generated]
        if dropped:
            stake.dropped_columns[table] = dropped
    return stake


def _stream(source: psycopg.Connection, query: sql.Composable, live: psycopg.Connection,
            into: sql.Composable) -> int:
    """COPY the rows of ``query`` on ``source`` into ``into`` (a table and column list) on
    ``live``, block by block; returns the rows written."""
    with source.cursor() as out, live.cursor() as cur:
        with out.copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as reading, \
                cur.copy(sql.SQL("COPY {} FROM STDIN").format(into)) as writing:
            for block in reading:
                writing.write(block)
        return cur.rowcount


def put_back_dropped(live: psycopg.Connection, before: psycopg.Connection,
                     stake: DataAtStake) -> dict[str, int]:
    """In live's open transaction, once the reverse plan re-created what the migration
    dropped: its rows, from the state before (a backup or snapshot holding them). A dropped
    table gets its rows back; a dropped column its values, matched by primary key (rows
    deleted since stay deleted). Returns rows written per table or column."""
    written: dict[str, int] = {}
    for table in stake.dropped_tables:
        columns = [c for c, generated in _columns(before)[table].items() if not generated]
        picked = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        written[str(table)] = _stream(
            before, sql.SQL("SELECT {} FROM {}").format(picked, table.identifier), live,
            sql.SQL("{} ({})").format(table.identifier, picked))
        advance_sequences(live, table)
    triggers = _enabled_triggers(live, list(stake.dropped_columns))
    for table, trigger in triggers:
        live.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
            table.identifier, sql.Identifier(trigger)))
    for table, dropped in stake.dropped_columns.items():
        key = primary_key(live, table)
        if not key:
            written[f"{table} ({', '.join(dropped)})"] = 0  # nothing to match rows by
            continue
        picked = sql.SQL(", ").join(sql.Identifier(c) for c in [*key, *dropped])
        temp = sql.Identifier(f"playbook_dropped_{table.schema}_{table.name}"[:63])
        live.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} LIMIT 0"
                             ).format(temp, picked, table.identifier))
        _stream(before, sql.SQL("SELECT {} FROM {}").format(picked, table.identifier), live,
                temp)
        updated = live.execute(sql.SQL("UPDATE {t} SET {sets} FROM {x} WHERE {match}").format(
            t=table.identifier, x=temp,
            sets=sql.SQL(", ").join(sql.SQL("{} = {}.{}").format(
                sql.Identifier(c), temp, sql.Identifier(c)) for c in dropped),
            match=sql.SQL(" AND ").join(sql.SQL("{}.{} = {}.{}").format(
                table.identifier, sql.Identifier(k), temp, sql.Identifier(k)) for k in key)))
        written[f"{table} ({', '.join(dropped)})"] = updated.rowcount
    for table, trigger in triggers:
        live.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(
            table.identifier, sql.Identifier(trigger)))
    return written


def lock_against_writes(conn: psycopg.Connection, tables: list[QualifiedName]) -> None:
    """EXCLUSIVE on every table at stake, in the caller's transaction: the application can
    still read them, but no write can commit between the export and the drop."""
    if tables:
        conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
            sql.SQL(", ").join(t.identifier for t in tables)))


def primary_key(conn: psycopg.Connection, table: QualifiedName) -> list[str]:
    return [r[0] for r in conn.execute(_PRIMARY_KEY, (table.identifier.as_string(conn),))]


def _loaded_copy(conn: psycopg.Connection, table: QualifiedName, path: Path) -> sql.Identifier:
    """A temporary table shaped like ``table`` (generated and identity columns as plain
    ones) holding the export's rows."""
    temp = sql.Identifier(f"playbook_load_{table.schema}_{table.name}"[:63])
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(
        temp, table.identifier))
    with conn.cursor() as cur, open(path, "rb") as handle:
        with cur.copy(sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv, HEADER)").format(temp)) as cp:
            for block in iter(lambda: handle.read(1 << 20), b""):
                cp.write(block)
    return temp


def _differing_rows(conn: psycopg.Connection, table: QualifiedName, temp: sql.Identifier,
                    columns: list[str]) -> int:
    picked = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    row = sql.SQL("ROW({})::text").format(picked)
    return conn.execute(sql.SQL(
        "SELECT (SELECT count(*) FROM (SELECT {row} FROM {t} EXCEPT ALL SELECT {row} FROM {x}) a)"
        " + (SELECT count(*) FROM (SELECT {row} FROM {x} EXCEPT ALL SELECT {row} FROM {t}) b)"
    ).format(row=row, t=table.identifier, x=temp)).fetchone()[0]


def _foreign_keys_between(conn: psycopg.Connection, tables: list[QualifiedName]
                          ) -> list[tuple[QualifiedName, str, str]]:
    oids = [conn.execute("SELECT %s::regclass::oid", (t.identifier.as_string(conn),)
                         ).fetchone()[0] for t in tables]
    return [(QualifiedName(r[0], r[1]), r[2], r[3]) for r in conn.execute(
        "SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid) "
        "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE k.contype = 'f' AND k.conparentid = 0 AND k.conrelid = ANY(%s) "
        "AND k.confrelid = ANY(%s) ORDER BY 1, 2, 3", (oids, oids))]


def restore_at_stake(conn: psycopg.Connection, manifest: Manifest, folder: Path
                     ) -> dict[str, int]:
    """In the caller's transaction, after the migration was re-applied: put the exported
    rows back and prove each table equals its export. Returns rows per table."""
    created = [QualifiedName(*t.split(".", 1)) for t in manifest.extra["created_tables"]]
    files = {f.table: f for f in manifest.files}
    # Foreign keys between the tables refilled are set aside while rows go in (a message
    # may reply to a later one), then added back, which checks every row.
    keys = _foreign_keys_between(conn, created)
    altered = [QualifiedName(*t.split(".", 1)) for t in manifest.extra["added_columns"]]
    # Triggers (updated_at stamps, counters, audit rows) must not fire for rows that
    # already happened once: the enabled ones are paused, then enabled again by name.
    triggers = _enabled_triggers(conn, [*created, *altered])
    for table, name in triggers:
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
            table.identifier, sql.Identifier(name)))
    for table, name, _definition in keys:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            table.identifier, sql.Identifier(name)))
    restored = {}
    for table in created:
        temp = _loaded_copy(conn, table, folder / files[str(table)].file)
        columns = _columns(conn)[table]
        writable = [c for c, generated in columns.items() if not generated]
        conn.execute(sql.SQL("DELETE FROM {}").format(table.identifier))  # the seeded rows
        picked = sql.SQL(", ").join(sql.Identifier(c) for c in writable)
        conn.execute(sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}"
                             ).format(table.identifier, picked, picked, temp))
        _require_equal(conn, table, temp, list(columns), files[str(table)])
        restored[str(table)] = files[str(table)].rows
    for table, name, definition in keys:
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            table.identifier, sql.Identifier(name), sql.SQL(definition)))
    for name, added in manifest.extra["added_columns"].items():
        table = QualifiedName(*name.split(".", 1))
        temp = _loaded_copy(conn, table, folder / files[name].file)
        key = primary_key(conn, table)
        if not key:
            raise VerificationFailed(
                f"{table} has no primary key, so the values of its added columns "
                f"({', '.join(added)}) cannot be matched to rows. The transaction is rolled "
                "back: nothing was changed.",
                next_step=f"restore {table} from the export's CSV by hand.")
        conn.execute(sql.SQL("UPDATE {t} SET {sets} FROM {x} WHERE {match}").format(
            t=table.identifier, x=temp,
            sets=sql.SQL(", ").join(sql.SQL("{} = {}.{}").format(
                sql.Identifier(c), temp, sql.Identifier(c)) for c in added),
            match=sql.SQL(" AND ").join(sql.SQL("{}.{} = {}.{}").format(
                table.identifier, sql.Identifier(k), temp, sql.Identifier(k)) for k in key)))
        _require_equal(conn, table, temp, [*key, *added], files[name])
        restored[name] = files[name].rows
    for table, trigger in triggers:
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(
            table.identifier, sql.Identifier(trigger)))
    return restored


def _enabled_triggers(conn: psycopg.Connection, tables: list[QualifiedName]
                      ) -> list[tuple[QualifiedName, str]]:
    found = []
    for table in tables:
        found += [(table, r[0]) for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
            "AND tgenabled = 'O' ORDER BY tgname", (table.identifier.as_string(conn),))]
    return found


def _require_equal(conn: psycopg.Connection, table: QualifiedName, temp: sql.Identifier,
                   columns: list[str], exported: ExportedFile) -> None:
    differing = _differing_rows(conn, table, temp, columns)
    if differing:
        raise VerificationFailed(
            f"{table} does not equal its export after the re-import: {differing} row(s) "
            f"differ in ({', '.join(columns)}). The transaction is rolled back: nothing was "
            "changed.",
            next_step="keep the export folder; compare it with the table by hand before "
            "trying again.")
