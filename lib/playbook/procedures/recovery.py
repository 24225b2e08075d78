"""Bringing a rolled-back migration back with its data (the document's "Recovery").

In one transaction: re-apply the migration's deploy script, re-import the export's CSV
files parents first, move every sequence the tables own past its column's MAX (only
forward: a re-created empty table's stays at its minimum), then prove it: per table, the
row count and the digest of its values computed on the server equal those step 1
recorded in its snapshot (:mod:`value_digest`), or, for a table without one, the SHA-256
of the table written out as the export wrote it equals the manifest's. Any difference is
a ROLLBACK. A missing, incomplete or damaged export is refused before anything is changed.

The import loads the way pg_restore does (:func:`bulk_import`): the foreign keys and
secondary indexes of the tables just created are set aside, the data is copied, then
each is re-created with its exact name and definition (a foreign key validated by one
join instead of a trigger per row, an index built in one pass), and the tables' schema
is proven identical to what the migration created before anything else happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from .. import value_digest
from ..changesets.migration import Migration
from ..changesets.objects import find_in_database, migration_objects
from ..csv_import import csv_columns, import_csv, table_sha256
from ..db.catalog import advance_sequences
from ..db.connecting import bulk_step_limits, lock_timeout_setting
from ..db.locks import take_playbook_lock
from ..db.names import QualifiedName, parse_table_name, table_oid
from ..db.queries import run_script, translated_errors
from ..errors import ExportMismatch, PreconditionFailed, VerificationFailed
from ..exports import INCOMPLETE, MANIFEST, Manifest, require_sound_export
from ..incidents import incidents_root
from ..reversal.reversible import ReversibleMigration
from ..verification import Check, checks_table, require_all_pass
from . import bulk_load
from .drops import DEFAULT_LOCK_TIMEOUT, default_export_dir, lock_scope


def find_export(migration: Migration, export_dir: str = "", incident_id: str = "") -> Path:
    """The export to recover from: ``export_dir``; else that incident's; else the newest
    export of this migration under incidents/ (shown to the operator before use). An
    export cut short counts as the newest, so that it is refused rather than an older
    one taken silently in its place."""
    if export_dir:
        return Path(export_dir).expanduser().resolve()
    root = incidents_root()
    if incident_id:
        return default_export_dir(migration, incident_id)
    candidates = sorted([*root.glob(f"*/exports/{migration.name}/{MANIFEST}"),
                         *root.glob(f"*/exports/{migration.name}/{INCOMPLETE}")],
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ExportMismatch(
            f"No export of {migration.name} was found under {root}. Nothing was changed.",
            next_step="pass export_dir (the folder holding manifest.json) or incident_id.",
        )
    return candidates[-1].parent


def require_complete_export(migration: Migration, folder: Path) -> Manifest:
    """The manifest, if the export was finished (no INCOMPLETE or SUPERSEDED marker, see
    :func:`exports.require_finished`), every file matches its SHA-256 and every table the
    migration creates is in it; ExportMismatch otherwise."""
    manifest = require_sound_export(folder)
    exported_for = manifest.extra.get("migration")
    if exported_for not in (None, migration.name):
        raise ExportMismatch(
            f"The export in {folder} is of migration {exported_for!r}, not {migration.name!r}. "
            "Nothing was changed.", next_step="point export_dir at this migration's export.")
    exported = manifest.by_table()
    missing = [f"{o.schema}.{o.name}" for o in migration_objects(migration)
               if o.kind == "table" and str(QualifiedName(o.schema, o.name)) not in exported]
    if missing:
        raise ExportMismatch(
            f"The export in {folder} is incomplete: {', '.join(missing)} not in it. Nothing "
            "was changed.", next_step="recover from a complete export or from a backup.")
    return manifest


def import_order(manifest: Manifest) -> list[QualifiedName]:
    order = manifest.extra.get("import_order") or [f.table for f in manifest.files]
    return [parse_table_name(t) for t in order]


def export_table(manifest: Manifest, folder: Path) -> pd.DataFrame:
    frame = pd.DataFrame([{"table": f.table, "file": f.file, "rows": f.rows, "bytes": f.bytes,
                           "sha256": f.sha256[:16] + "…", "verified": "PASS"}
                          for f in manifest.files])
    frame.attrs["folder"] = str(folder)
    return frame


def check_export(migration: Migration, folder: Path) -> pd.DataFrame:
    """Recovery step 0: the export exists, is complete and matches its checksums."""
    if isinstance(migration, ReversibleMigration):
        return migration.check_export(folder)
    return export_table(require_complete_export(migration, folder), folder)


@dataclass
class RecoveryResult:
    migration: str
    committed: bool = False
    imported: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return checks_table(self.checks)


# --- loading the way pg_restore does -------------------------------------------------

FOREIGN_KEY, INDEX, KEY = "foreign key", "index", "key"

# Foreign keys that can be set aside: BETWEEN the loaded tables only (both ends), declared
# on an ordinary table (not a partition, not inherited from a partitioned parent), nothing
# but their own internal triggers depending on them, no comment to lose.
# - A foreign key from a loaded table to another table (public.profiles) is kept: dropping
#   it drops its triggers on the referenced table, which takes ACCESS EXCLUSIVE on that
#   table until COMMIT (measured: logins could not read profiles during the whole load).
# - A foreign key of ANOTHER table pointing into a loaded one is kept too: not ours to
#   touch, and free while rows are inserted (its triggers fire on UPDATE/DELETE only).
_FOREIGN_KEYS = """
SELECT 'foreign key', n.nspname, t.relname, con.conname, pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE con.contype = 'f' AND con.conrelid = ANY(%(tables)s) AND con.conparentid = 0
  AND con.confrelid = ANY(%(tables)s)
  AND t.relkind = 'r' AND NOT t.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_constraint'::regclass
                  AND d.refobjid = con.oid AND d.deptype <> 'i')
  AND NOT EXISTS (SELECT 1 FROM pg_description ds
                  WHERE ds.classoid = 'pg_constraint'::regclass AND ds.objoid = con.oid)
ORDER BY 2, 3, 4
"""

# Secondary indexes that can be set aside: not behind a primary key, unique or exclusion
# constraint (those are kept: foreign keys rely on them), nothing depending on them (a
# foreign key may use a plain unique index), valid, not a partition's, not the CLUSTER or
# replica identity index, in the default tablespace, no comment and no per-column
# statistics target: everything about them is in pg_get_indexdef and their name.
_SECONDARY_INDEXES = """
SELECT 'index', n.nspname, t.relname, i.relname, pg_get_indexdef(x.indexrelid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = i.relnamespace
WHERE x.indrelid = ANY(%(tables)s) AND t.relkind = 'r' AND NOT t.relispartition
  AND x.indisvalid AND x.indisready AND x.indislive
  AND NOT x.indisclustered AND NOT x.indisreplident AND i.reltablespace = 0
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid
                  AND c.contype IN ('p', 'u', 'x'))
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass
                  AND d.refobjid = x.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = x.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_description ds
                  WHERE ds.classoid = 'pg_class'::regclass AND ds.objoid = x.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = x.indexrelid AND a.attstattarget >= 0)
ORDER BY 2, 3, 4
"""


@dataclass(frozen=True)
class SetAside:
    """A foreign key or secondary index of a table being loaded: dropped before the COPY,
    re-created after it with the same name and the definition the server printed."""

    kind: str  # FOREIGN_KEY, KEY (primary or unique) or INDEX
    schema: str
    table: str
    name: str
    definition: str  # pg_get_constraintdef / pg_get_indexdef, server-generated

    def drop_statement(self) -> sql.Composed:
        if self.kind in (FOREIGN_KEY, KEY):
            return sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(self.schema, self.table), sql.Identifier(self.name))
        return sql.SQL("DROP INDEX {}").format(sql.Identifier(self.schema, self.name))

    def create_statement(self) -> sql.Composed:
        # The definition is text PostgreSQL generated from its own catalog (pg_get_*def of
        # an object the migration's script just created, read with an empty search_path
        # so every name in it is qualified); no parameter or file content ever enters it.
        # It is wrapped as SQL exactly as the server produced it.
        server_text = sql.SQL(self.definition)
        if self.kind in (FOREIGN_KEY, KEY):
            return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(self.schema, self.table), sql.Identifier(self.name),
                server_text)
        return sql.Composed([server_text])


@contextmanager
def _qualified_names(conn: psycopg.Connection) -> Iterator[None]:
    """pg_get_*def qualify every name not visible in search_path: read them with an empty
    one (for this transaction only, put back afterwards)."""
    saved = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
    conn.execute("SELECT set_config('search_path', '', true)")
    try:
        yield
    finally:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            conn.execute("SELECT set_config('search_path', %s, true)", (saved,))


def _oids(conn: psycopg.Connection, tables: list[QualifiedName]) -> list[int]:
    return [table_oid(conn, t) for t in tables]


def objects_to_set_aside(conn: psycopg.Connection, tables: list[QualifiedName]
                         ) -> list[SetAside]:
    """The foreign keys, then the secondary indexes, of ``tables`` that a bulk load may
    drop and re-create (what is kept and why: ``_FOREIGN_KEYS``, ``_SECONDARY_INDEXES``)."""
    oids = _oids(conn, tables)
    with _qualified_names(conn):
        rows = (conn.execute(_FOREIGN_KEYS, {"tables": oids}).fetchall()
                + conn.execute(_SECONDARY_INDEXES, {"tables": oids}).fetchall())
    return [SetAside(*row) for row in rows]


def keys_to_set_aside(conn: psycopg.Connection, tables: list[QualifiedName],
                      set_aside: list[SetAside]) -> list[SetAside]:
    """The primary and unique keys of ``tables`` that a load may drop and re-create once
    the foreign keys in ``set_aside`` are dropped (see ``bulk_load._KEYS``): built after
    the data, in one pass, as pg_restore builds them."""
    foreign_keys = [(o.schema, o.table, o.name) for o in set_aside if o.kind == FOREIGN_KEY]
    with _qualified_names(conn):
        rows = bulk_load.key_rows(conn, _oids(conn, tables), foreign_keys)
    return [SetAside(*row) for row in rows]


# The loaded tables' schema as the catalog describes it, keyed so that two databases (or
# one before and after the load) compare equal exactly when they hold the same
# constraints, indexes, triggers, policies and row-level security, by name and definition.
# Internal foreign-key triggers (named after their oid) are keyed by their constraint,
# table, function and type instead, counted.
_SCHEMA = """
SELECT 'constraint ' || c.conrelid::regclass || ' ' || quote_ident(c.conname),
       pg_get_constraintdef(c.oid) || ' | validated ' || c.convalidated
       || coalesce(' | comment ' || obj_description(c.oid, 'pg_constraint'), '')
FROM pg_constraint c WHERE c.conrelid = ANY(%(tables)s)
UNION ALL
SELECT 'index ' || x.indrelid::regclass || ' ' || quote_ident(i.relname),
       pg_get_indexdef(x.indexrelid) || ' | valid ' || x.indisvalid
       || ' | clustered ' || x.indisclustered || ' | replica identity ' || x.indisreplident
       || ' | tablespace ' || i.reltablespace
       || coalesce(' | comment ' || obj_description(i.oid, 'pg_class'), '')
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = ANY(%(tables)s)
UNION ALL
SELECT 'trigger ' || g.tgrelid::regclass || ' ' || quote_ident(g.tgname),
       pg_get_triggerdef(g.oid) || ' | enabled ' || g.tgenabled::text
FROM pg_trigger g WHERE g.tgrelid = ANY(%(tables)s) AND NOT g.tgisinternal
UNION ALL
SELECT 'internal trigger of ' || c.conrelid::regclass || ' ' || quote_ident(c.conname)
       || ' on ' || g.tgrelid::regclass || ' ' || g.tgfoid::regproc || ' type ' || g.tgtype
       || ' enabled ' || g.tgenabled::text || ' deferrable ' || g.tgdeferrable
       || ' initdeferred ' || g.tginitdeferred,
       count(*)::text
FROM pg_trigger g JOIN pg_constraint c ON c.oid = g.tgconstraint
WHERE g.tgisinternal AND c.conrelid = ANY(%(tables)s)
GROUP BY 1
UNION ALL
SELECT 'policy ' || p.polrelid::regclass || ' ' || quote_ident(p.polname),
       p.polcmd::text || ' | permissive ' || p.polpermissive || ' | roles '
       || array_to_string(ARRAY(SELECT CASE r WHEN 0 THEN 'public' ELSE r::regrole::text END
                                FROM unnest(p.polroles) r ORDER BY 1), ',')
       || ' | using ' || coalesce(pg_get_expr(p.polqual, p.polrelid), '')
       || ' | check ' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')
FROM pg_policy p WHERE p.polrelid = ANY(%(tables)s)
UNION ALL
SELECT 'table ' || t.oid::regclass,
       'row security ' || t.relrowsecurity || ' | forced ' || t.relforcerowsecurity
FROM pg_class t WHERE t.oid = ANY(%(tables)s)
"""


def schema_snapshot(conn: psycopg.Connection, tables: list[QualifiedName]) -> dict[str, str]:
    """Constraints, indexes, triggers, policies and row-level security of ``tables``, by
    name and server-printed definition (comparable across databases)."""
    with _qualified_names(conn):
        rows = conn.execute(_SCHEMA, {"tables": _oids(conn, tables)}).fetchall()
    return dict(sorted(rows))


def schema_differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs between two :func:`schema_snapshot` results, one line per object."""
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            lines.append(f"{key}: {before.get(key, '(absent)')} -> {after.get(key, '(absent)')}")
    return lines


def _rejected_rows(exc: psycopg.Error, stage: str) -> VerificationFailed:
    diag = exc.diag
    where = f"table {diag.schema_name}.{diag.table_name}" if diag.table_name else "a table"
    constraint = f"constraint {diag.constraint_name}" if diag.constraint_name else "a constraint"
    detail = f" ({diag.message_detail})" if diag.message_detail else ""
    return VerificationFailed(
        f"The exported rows break {constraint} of {where} while {stage}: "
        f"{diag.message_primary}{detail}. The transaction was rolled back; nothing was "
        "re-applied.",
        next_step="the export does not fit the migration's constraints (edited, or taken "
        "from another database): recover from an untouched export, the pg_dump archive or "
        "a backup.")


def bulk_import(conn: psycopg.Connection, tables: list[QualifiedName], folder: Path,
                manifest: Manifest, *, set_aside_on: list[QualifiedName] | None = None,
                show_progress: bool = False) -> dict[str, int]:
    """Import each table's CSV (``tables`` in order, parents first) in the current
    transaction, the way pg_restore does: foreign keys and secondary indexes set aside,
    data copied, each re-created with its exact name and definition, then the tables'
    constraints, indexes, triggers and policies proven identical to before. Returns the
    rows loaded per table. Rows that break a constraint raise VerificationFailed naming it
    (the caller's transaction then rolls everything back). Only the tables of
    ``set_aside_on`` (default: all of ``tables``) have anything set aside."""
    restructured = [t for t in tables if set_aside_on is None or t in set_aside_on]
    before = schema_snapshot(conn, restructured)
    set_aside = objects_to_set_aside(conn, restructured)
    set_aside += keys_to_set_aside(conn, restructured, set_aside)
    # Foreign keys go first (they rely on keys), then keys, then plain indexes.
    rank = {FOREIGN_KEY: 0, KEY: 1, INDEX: 2}
    for obj in sorted(set_aside, key=lambda o: rank[o.kind]):
        conn.execute(obj.drop_statement())
    loaded = _oids(conn, tables)
    imported = {}
    with bulk_load.rows_without_row_triggers(conn, loaded) as unchecked:
        # The foreign keys still in place are not checked row by row in that mode: they
        # are checked below, in one pass each.
        kept = bulk_load.kept_foreign_keys(conn, loaded) if unchecked else []
        try:
            for table in tables:
                entry = manifest.by_table()[str(table)]
                imported[str(table)] = import_csv(conn, table, folder / entry.file,
                                                  show_progress=show_progress,
                                                  expected_rows=entry.rows)
        except pgerrors.IntegrityError as exc:
            raise _rejected_rows(exc, "being copied") from None
    # Keys and indexes first (a unique one refuses duplicates here), then the foreign
    # keys: ADD CONSTRAINT validates all rows with one anti-join where the COPY would have
    # queued a trigger per row.
    rebuild = {KEY: 0, INDEX: 1, FOREIGN_KEY: 2}
    for obj in sorted(set_aside, key=lambda o: rebuild[o.kind]):
        try:
            conn.execute(obj.create_statement())
        except pgerrors.IntegrityError as exc:
            raise _rejected_rows(exc, f"re-creating {obj.kind} {obj.name}") from None
    bulk_load.check_kept_foreign_keys(conn, kept)
    differences = schema_differences(before, schema_snapshot(conn, restructured))
    if differences:
        raise VerificationFailed(
            "After the load the tables' schema is not what the migration created ("
            + "; ".join(differences) + "). The transaction was rolled back; nothing was "
            "re-applied.", next_step="report this as a playbook defect; recover with "
            "psql \\copy into the freshly migrated tables meanwhile.")
    return imported


def proof_checks(conn: psycopg.Connection, table: QualifiedName, folder: Path,
                 manifest: Manifest, *, show_progress: bool = False) -> list[Check]:
    """The proof that ``table`` now holds the exported rows, in the recovery's
    transaction: the digest of its values computed on the server, against the one step 1
    recorded in its snapshot (value_digest.py); an export without one, or a table whose
    types cannot be hashed, is re-read as CSV and hashed as the export's file was."""
    entry = manifest.by_table()[str(table)]
    columns = csv_columns(folder / entry.file)
    digest = (value_digest.table_digest(conn, table, columns)
              if entry.value_digest else None)
    if digest is not None:
        rows = int(digest.split(":")[1])
        return [Check(f"{table} rows equal the export's", rows == entry.rows, rows, entry.rows),
                Check(f"{table} values equal the export's (server-side digest)",
                      digest == entry.value_digest, digest, entry.value_digest)]
    rows, _size, sha256 = table_sha256(
        conn, table, columns, manifest.extra.get("session") or {},
        show_progress=show_progress, expected_bytes=entry.bytes)
    return [Check(f"{table} rows equal the export's", rows == entry.rows, rows, entry.rows),
            Check(f"{table} SHA-256 equals the export's", sha256 == entry.sha256,
                  sha256[:16], entry.sha256[:16])]


def perform_recovery(conn: psycopg.Connection, migration: Migration, folder: Path,
                     *, lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
                     show_progress: bool = False) -> RecoveryResult:
    """Re-apply, re-import, fix sequences and prove, in one transaction (module docstring).
    ``conn`` must be a read-write session that is not in a transaction."""
    lock_timeout = lock_timeout_setting(lock_timeout)
    folder = Path(folder)
    manifest = require_complete_export(migration, folder)
    result = RecoveryResult(migration.name)
    with translated_errors(conn):
        with conn.transaction():
            bulk_step_limits(conn, lock_timeout)
            take_playbook_lock(conn, lock_scope(migration))
            holding = {f.obj.display: f.rows for f in
                       find_in_database(conn, migration).of_kind("table") if f.rows}
            if holding:
                raise PreconditionFailed(
                    f"The migration's tables are already back and hold rows "
                    f"({', '.join(f'{t}: {n}' for t, n in holding.items())}); importing "
                    "the export would duplicate them. Nothing was changed.",
                    next_step="compare the live data with the export; recovery is for "
                    "after a rollback.")
            run_script(conn, migration.deploy)
            # Only the tables this migration creates are restructured for the load.
            created = [QualifiedName(o.schema, o.name) for o in migration_objects(migration)
                       if o.kind == "table"]
            result.imported.update(bulk_import(conn, import_order(manifest), folder,
                                               manifest, set_aside_on=created,
                                               show_progress=show_progress))
            for table in import_order(manifest):
                result.sequences.update({p.sequence: p.next_value
                                         for p in advance_sequences(conn, table)})
            for table in import_order(manifest):
                result.checks += proof_checks(conn, table, folder, manifest,
                                              show_progress=show_progress)
            for name, next_value in result.sequences.items():
                result.checks.append(Check(f"{name} hands out a new value next", True,
                                           f"next {next_value}", "past MAX"))
            require_all_pass(
                result.checks, "The re-imported data does not equal the export",
                outcome="The transaction was rolled back; nothing was re-applied.",
                next_step="look for triggers or defaults in the migration that rewrite "
                "rows on insert; recover from the pg_dump archive or a backup instead.")
        result.committed = True
    return result


