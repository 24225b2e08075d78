"""Notebook 21, Rollback Script 2's Recovery: re-apply a rolled-back migration and put
its exported data back.

Find the export and verify it, look at what exists now, review the recovery as it will
run, the gate, then recover and prove it in one transaction (:mod:`playbook.procedures.recovery`),
and verify the application. A migration reversed by schema diff brings its own steps.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import journal
from ..changesets.migration import Migration, load_migration
from ..changesets.objects import Inventory
from ..csv_import import csv_columns, import_statement
from ..db.connecting import lock_timeout_setting
from ..gates import Gate
from ..procedures.drops import DEFAULT_LOCK_TIMEOUT
from ..procedures.health import check_application
from ..procedures.recovery import (
    check_export,
    find_export,
    import_order,
    perform_recovery,
    require_complete_export,
)
from ..reversal.reversible import ReversibleMigration
from ..runs import Run
from .rollback_coaching_tables import review_what_will_be_deleted

GATE_QUESTIONS = {
    "recovery_reviewed": "Have you reviewed the recovery plan shown above?",
    "application_stopped": "Is the application stopped (no writes while the data goes back)?",
    "team_notified": "Has the team been notified?",
}


def load_change_set(run: Run, migration: str, *, migrations_folder: str = "", backup: str = "",
                    scratch_url_env: str = "") -> Migration:
    """The change set called ``migration`` (or at that path), as notebook 20 loaded it."""
    return load_migration(migration, migrations_folder=migrations_folder, backup=backup,
                          scratch_url_env=scratch_url_env)


def find_the_export(run: Run, migration: Migration, export_dir: str = "") -> Path:
    """The export to recover from: ``export_dir``; else this incident's; else the newest
    export of the migration (shown before anything uses it)."""
    return find_export(migration, export_dir, run.incident_id)


def verify_export(run: Run, migration: Migration, export_folder: Path) -> pd.DataFrame:
    """The export exists, is complete and matches its checksums (nothing is changed)."""
    return check_export(migration, export_folder)


def what_exists_now(run: Run, migration: Migration) -> Inventory:
    """The migration's objects as the target has them now (notebook 20's review)."""
    return review_what_will_be_deleted(run, migration)


def plan_recovery(run: Run, migration: Migration, folder: Path) -> pd.DataFrame:
    """What execute mode will run, in order (statements rendered by the same functions)."""
    if isinstance(migration, ReversibleMigration):
        return migration.recovery_plan(folder)
    manifest = require_complete_export(migration, folder)
    with run.connect(read_only=True) as conn:
        rows = [{"step": 1, "does": "re-apply the migration", "statement":
                 f"(the whole deploy script {migration.deploy.name})"}]
        rows.append({"step": 2, "does": "set aside, for the load, the foreign keys between "
                     "the new tables and their secondary indexes (names and definitions read "
                     "from the catalog after step 1)", "statement": "ALTER TABLE <table> DROP "
                     "CONSTRAINT <foreign key>; DROP INDEX <index>"})
        for table in import_order(manifest):
            entry = manifest.by_table()[str(table)]
            statement = import_statement(table, csv_columns(folder / entry.file))
            rows.append({"step": 2, "does": f"re-import {entry.rows} rows into {table}",
                         "statement": statement.as_string(conn)})
        rows.append({"step": 2, "does": "re-create each with its exact name and definition "
                     "(a foreign key validated in one pass), then prove constraints, indexes, "
                     "triggers and policies identical to what step 1 created, else ROLLBACK",
                     "statement": "<pg_get_indexdef>; ALTER TABLE <table> ADD CONSTRAINT "
                     "<foreign key> <pg_get_constraintdef>"})
    rows.append({"step": 3, "does": "move every owned sequence past its column's MAX",
                 "statement": "SELECT setval(<sequence the catalog names>, MAX(column)) "
                 "(only forward; an empty table's stays at its minimum)"})
    rows.append({"step": 4, "does": "prove rows and SHA-256 equal the manifest's, else "
                 "ROLLBACK", "statement": "COPY (SELECT <exported columns> FROM table) TO "
                 "STDOUT (hashed)"})
    return pd.DataFrame(rows, columns=["step", "does", "statement"])


def gate(run: Run) -> Gate:
    """The questions before re-applying, pre-filled from ``run.answers``."""
    return run.add_gate(Gate("Recovery: before re-applying", GATE_QUESTIONS, run.answers))


def recover(run: Run, migration: Migration, folder: Path,
            *, lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> pd.DataFrame:
    """Execute mode: :func:`perform_recovery`; review mode: change nothing, say so."""
    lock_timeout = lock_timeout_setting(lock_timeout)  # refused in review mode too
    if isinstance(migration, ReversibleMigration):
        return migration.recover(run, folder, lock_timeout=lock_timeout)
    if not run.executing:
        return pd.DataFrame([{"check": "review mode: nothing was re-applied", "result": "",
                              "observed": "", "expected": "mode='execute' to perform"}])
    run.require_open_gates()
    with run.connect(purpose=f"{run.notebook}:recover") as conn:
        result = perform_recovery(conn, migration, folder, lock_timeout=lock_timeout,
                                  show_progress=True)
    if result.committed:
        journal.committed("the recovery", [f"{migration.name} re-applied", *result.imported],
                          result.imported,
                          f"sequences moved: {', '.join(result.sequences) or 'none'}")
    return result.table()


def verify_application(run: Run, health_check_url: str, migration: Migration) -> pd.DataFrame:
    """The same verification as notebook 20's step, after the recovery."""
    return check_application(run, health_check_url, migration)
