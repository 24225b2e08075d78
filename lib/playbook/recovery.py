"""Bringing a rolled-back migration back with its data (the document's "Recovery").

In one transaction: re-apply the migration's deploy script, re-import the export's CSV
files parents first, move every sequence the tables own past its column's MAX (an empty
table's sequence restarts at its minimum), then prove it: per table, the row count and
the SHA-256 of the table written out as the export wrote it equal the manifest's. Any
difference is a ROLLBACK. A missing, incomplete or damaged export is refused before
anything is changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

from .drops import DEFAULT_LOCK_TIMEOUT, _RollBack, lock_scope
from .errors import ExportMismatch, PreconditionFailed, VerificationFailed
from .exports import (
    MANIFEST,
    Manifest,
    csv_columns,
    import_csv,
    import_statement,
    require_sound_export,
    table_sha256,
)
from .gates import Gate
from .incidents import incidents_root
from .locks import take_playbook_lock
from .migration_objects import find_in_database, migration_objects, owned_sequences
from .migrations import Migration
from .names import QualifiedName, parse_table_name
from .queries import run_script, translated_errors
from .verification import Check, checks_table

RECOVERY_QUESTIONS = {
    "recovery_reviewed": "Have you reviewed the recovery plan shown above?",
    "application_stopped": "Is the application stopped (no writes while the data goes back)?",
    "team_notified": "Has the team been notified?",
}


def find_export(migration: Migration, export_dir: str = "", incident_id: str = "") -> Path:
    """The export to recover from: ``export_dir``; else that incident's; else the newest
    export of this migration under incidents/ (shown to the operator before use)."""
    if export_dir:
        return Path(export_dir).expanduser().resolve()
    root = incidents_root()
    if incident_id:
        from .drops import default_export_dir

        return default_export_dir(migration, incident_id)
    candidates = sorted(root.glob(f"*/exports/{migration.name}/{MANIFEST}"),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ExportMismatch(
            f"No export of {migration.name} was found under {root}. Nothing was changed.",
            next_step="pass export_dir (the folder holding manifest.json) or incident_id.",
        )
    return candidates[-1].parent


def require_complete_export(migration: Migration, folder: Path) -> Manifest:
    """The manifest, if every file matches its SHA-256 and every table the migration
    creates is in it; ExportMismatch otherwise."""
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
    return export_table(require_complete_export(migration, folder), folder)


def recovery_gate(run) -> Gate:
    return Gate("Recovery: before re-applying", RECOVERY_QUESTIONS, run.answers)


def recovery_plan(run, migration: Migration, folder: Path) -> pd.DataFrame:
    """What execute mode will run, in order (statements rendered by the same functions)."""
    manifest = require_complete_export(migration, folder)
    with run.connect(read_only=True) as conn:
        rows = [{"step": 1, "does": "re-apply the migration", "statement":
                 f"(the whole deploy script {migration.deploy.name})"}]
        for table in import_order(manifest):
            entry = manifest.by_table()[str(table)]
            statement = import_statement(table, csv_columns(folder / entry.file))
            rows.append({"step": 2, "does": f"re-import {entry.rows} rows into {table}",
                         "statement": statement.as_string(conn)})
    rows.append({"step": 3, "does": "move every owned sequence past its column's MAX",
                 "statement": "SELECT setval(<sequence the catalog names>, MAX(column)) "
                 "(empty table: its minimum, is_called = false)"})
    rows.append({"step": 4, "does": "prove rows and SHA-256 equal the manifest's, else "
                 "ROLLBACK", "statement": "COPY (SELECT <exported columns> FROM table) TO "
                 "STDOUT (hashed)"})
    return pd.DataFrame(rows, columns=["step", "does", "statement"])


@dataclass
class RecoveryResult:
    migration: str
    committed: bool = False
    imported: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return checks_table(self.checks)


def set_owned_sequences(conn: psycopg.Connection, table: QualifiedName) -> dict[str, int]:
    """Every sequence owned by a column of ``table`` moved past that column's MAX; an
    empty table's sequence set to its minimum with is_called = false. Returns the next
    value each will hand out."""
    oid = conn.execute("SELECT %s::regclass::oid", (table.identifier.as_string(conn),)
                       ).fetchone()[0]
    moved = {}
    for schema, name, column in owned_sequences(conn, oid):
        sequence = sql.Identifier(schema, name).as_string(conn)
        highest = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(
            sql.Identifier(column), table.identifier)).fetchone()[0]
        minimum = conn.execute("SELECT seqmin FROM pg_sequence WHERE seqrelid = %s::regclass",
                               (sequence,)).fetchone()[0]
        if highest is None or highest < minimum:
            conn.execute("SELECT setval(%s::regclass, %s, false)", (sequence, minimum))
            moved[f"{schema}.{name}"] = minimum
        else:
            conn.execute("SELECT setval(%s::regclass, %s, true)", (sequence, highest))
            moved[f"{schema}.{name}"] = highest + 1
    return moved


def perform_recovery(conn: psycopg.Connection, migration: Migration, folder: Path,
                     *, lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> RecoveryResult:
    """Re-apply, re-import, fix sequences and prove, in one transaction (module docstring).
    ``conn`` must be a read-write session that is not in a transaction."""
    folder = Path(folder)
    manifest = require_complete_export(migration, folder)
    result = RecoveryResult(migration.name)
    with translated_errors():
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
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
                for table in import_order(manifest):
                    entry = manifest.by_table()[str(table)]
                    result.imported[str(table)] = import_csv(conn, table, folder / entry.file)
                for table in import_order(manifest):
                    result.sequences.update(set_owned_sequences(conn, table))
                settings = manifest.extra.get("session") or {}
                for table in import_order(manifest):
                    entry = manifest.by_table()[str(table)]
                    rows, _size, digest = table_sha256(
                        conn, table, csv_columns(folder / entry.file), settings)
                    result.checks.append(Check(f"{table} rows equal the export's",
                                               rows == entry.rows, rows, entry.rows))
                    result.checks.append(Check(f"{table} SHA-256 equals the export's",
                                               digest == entry.sha256, digest[:16],
                                               entry.sha256[:16]))
                for name, next_value in result.sequences.items():
                    result.checks.append(Check(f"{name} hands out a new value next", True,
                                               f"next {next_value}", "past MAX"))
                if not all(c.passed for c in result.checks):
                    raise _RollBack()
            result.committed = True
        except _RollBack:
            failed = "; ".join(f"{c.name}: observed {c.observed}, expected {c.expected}"
                               for c in result.checks if not c.passed)
            raise VerificationFailed(
                f"The re-imported data does not equal the export ({failed}). The transaction "
                "was rolled back; nothing was re-applied.",
                next_step="look for triggers or defaults in the migration that rewrite rows "
                "on insert; recover from the pg_dump archive or a backup instead.") from None
    return result


def recover(run, migration: Migration, folder: Path,
            *, lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> pd.DataFrame:
    """Execute mode: :func:`perform_recovery`; review mode: change nothing, say so."""
    if not run.executing:
        return pd.DataFrame([{"check": "review mode: nothing was re-applied", "result": "",
                              "observed": "", "expected": "mode='execute' to perform"}])
    with run.connect(purpose=f"{run.notebook}:recover") as conn:
        return perform_recovery(conn, migration, folder, lock_timeout=lock_timeout).table()
