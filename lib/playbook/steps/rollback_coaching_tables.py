"""Notebook 20, Rollback Script 2: remove a migration's tables (the coaching tables).

The document's order: review what will be deleted (step 2), the STOP questions, export the
data, verified (step 1), perform the rollback (step 3), verify the application (step 4).
The plan, the export and the drop are :mod:`playbook.procedures.drops`; a migration reversed by
schema diff (:class:`~playbook.reversal.reversible.ReversibleMigration`) brings its own.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from IPython.display import display

from .. import journal
from ..changesets.dependencies import (
    check_include_dependents,
    dependents_table,
    find_dependents,
    require_no_unlisted_dependents,
)
from ..changesets.migration import Migration, load_migration
from ..changesets.objects import Inventory, find_in_database
from ..db.connecting import lock_timeout_setting
from ..db.pgbinaries import client_program
from ..exports import MANIFEST
from ..gates import Gate
from ..procedures.drops import (
    DEFAULT_LOCK_TIMEOUT,
    DropPlan,
    build_drop_plan,
    default_export_dir,
    export_extra,
    export_order,
    export_problems,
    manifest_table,
    perform_drop,
    rows_dropped,
)
from ..procedures.health import check_application
from ..procedures.rollback_export import export_with_archive
from ..reversal.reversible import ReversibleMigration
from ..runs import Run

# The document's five STOP questions, then its prerequisites.
GATE_QUESTIONS = {
    "recent_backup": "Do you have a recent database backup?",
    "backup_tested": "Have you tested restoring from that backup?",
    "data_exported": "Have you exported the migration's data separately? (the next step "
    "exports it; the drop blocks writes to the tables and takes the final export first)",
    "no_other_way": "Is there NO other way to fix the issue (fix forward, partial rollback)?",
    "team_notified": "Has the team been notified?",
    "maintenance_window": "Is a maintenance window scheduled, with the application stopped "
    "(no new writes)?",
    "scripts_reviewed": "Have you reviewed the drop statements shown above?",
    "understand_data_loss": "Do you understand what data will be lost (the row counts "
    "above)?",
}


def load_change_set(run: Run, migration: str, *, migrations_folder: str = "", backup: str = "",
                    scratch_url_env: str = "", restore_dropped_data: object = False
                    ) -> Migration:
    """The change set called ``migration`` (or at that path); with ``migrations_folder`` or
    ``backup``, a migration reversed by schema diff."""
    return load_migration(migration, migrations_folder=migrations_folder, backup=backup,
                          scratch_url_env=scratch_url_env,
                          restore_dropped_data=restore_dropped_data)


def export_folder(run: Run, migration: Migration, export_dir: str = "") -> Path:
    """Where step 4 exports: ``export_dir``, else the incident's ``exports/<migration>``."""
    return default_export_dir(migration, run.incident_id, export_dir)


def review_what_will_be_deleted(run: Run, migration: Migration) -> Inventory:
    """Step 2: what the migration created, which of it exists, with row counts (for a
    migration reversed by schema diff: the data at stake)."""
    if isinstance(migration, ReversibleMigration):
        return migration.review(run)[1]
    with run.connect(read_only=True) as conn:
        return find_in_database(conn, migration)


def what_else_would_go(run: Run, migration: Migration,
                       include_dependents: list[str] = ()) -> pd.DataFrame:
    """Step 3: what else would go. Shows the table, then raises DependentObjectsExist while
    any outside object is not named in include_dependents."""
    include_dependents = check_include_dependents(include_dependents)
    if isinstance(migration, ReversibleMigration):
        return migration.dependents_table(run)
    with run.connect(read_only=True) as conn:
        dependents = find_dependents(conn, find_in_database(conn, migration,
                                                            count_rows=False))
    frame = dependents_table(dependents, include_dependents)
    if dependents:
        display(frame)
    require_no_unlisted_dependents(dependents, include_dependents)
    if frame.empty:
        return pd.DataFrame([{"outside object": "(none)", "kind": "",
                              "would be dropped": "nothing outside the migration depends on it"}])
    return frame


def plan_drop(run: Run, migration: Migration,
              include_dependents: list[str] = ()) -> DropPlan:
    """The plan, built read-only (review mode shows exactly what execute would run)."""
    if isinstance(migration, ReversibleMigration):
        return migration.review(run)[0]
    with run.connect(read_only=True, purpose=f"{run.notebook}:review") as conn:
        return build_drop_plan(conn, migration, include_dependents)


def gate(run: Run, migration: Migration, export_dir: Path) -> Gate:
    """The STOP questions and prerequisites, pre-filled from ``run.answers``.

    The export question is verified against the live data when a manifest is already in
    ``export_dir`` (a failed check closes the gate). Without one (the usual case: notebook
    20 exports right after this gate) nothing can be verified yet, and the question says
    so instead of showing a check: the drop itself blocks writes to the tables and takes
    the final export before dropping anything (:func:`perform_drop`)."""
    export_dir = Path(export_dir)
    questions = dict(GATE_QUESTIONS)
    if not (export_dir / MANIFEST).exists():
        questions["data_exported"] = (
            f"Have you exported the migration's data separately? Not verified yet: there is "
            f"no export in {export_dir}; the next step exports it there and it will be "
            "verified before the drop (the drop blocks writes to the tables and takes the "
            "final export, holding every committed write, before it drops anything).")
    asked = Gate(f"Rollback of {migration.name}: STOP", questions, run.answers)
    if (export_dir / MANIFEST).exists():
        if isinstance(migration, ReversibleMigration):
            problems = migration.export_problems(export_dir)
        else:
            with run.connect(read_only=True) as conn:
                problems = export_problems(conn, migration, export_dir)
        asked.verify("data_exported", not problems,
                     "; ".join(problems) or f"verified: the manifest in {export_dir} matches "
                     "the live data")
    return run.add_gate(asked)


def export_data(run: Run, migration: Migration, export_dir: Path,
                *, archive: bool = True, show_progress: bool = True) -> pd.DataFrame:
    """Step 1: every table of the migration to CSV with rows and SHA-256 in manifest.json
    (one snapshot), plus a pg_dump custom-format archive of the tables and each table's
    value digest, taken in that snapshot (:mod:`procedures.rollback_export`). Read-only
    for the database; writes only into ``export_dir``. Runs only while the run's gates are open.
    (A migration reversed by schema diff exports what its reversal destroys beside it, as a
    preview: its rollback exports again under its write lock, into ``export_dir``.)"""
    if isinstance(migration, ReversibleMigration):
        return migration.export(run, export_dir)
    run.require_open_gates()
    export_dir = Path(export_dir)
    with run.connect(read_only=True, purpose=f"{run.notebook}:export") as conn:
        tables = export_order(conn, find_in_database(conn, migration, count_rows=False))
        major = conn.info.server_version // 10000
    # A pg_dump too old for the server is refused before any file is written, so no
    # CSV-only export is ever left for a drop to accept.
    pg_dump = client_program("pg_dump", major) if archive and tables else None
    manifest = export_with_archive(
        lambda: run.connect(read_only=True, purpose=f"{run.notebook}:export"), run.url(),
        tables, export_dir, purpose=f"rollback of {migration.name}",
        extra=export_extra(migration, tables), show_progress=show_progress,
        archive=export_dir / f"{migration.name}.dump" if archive else None, pg_dump=pg_dump)
    return manifest_table(manifest, export_dir)


def perform_rollback(run: Run, migration: Migration, export_dir: Path,
                     include_dependents: list[str] = (),
                     *, lock_timeout: str = DEFAULT_LOCK_TIMEOUT) -> pd.DataFrame:
    """Step 3, Perform: in execute mode drop (see :func:`perform_drop`); in review mode
    say what would be dropped and change nothing."""
    lock_timeout = lock_timeout_setting(lock_timeout)  # refused in review mode too
    if isinstance(migration, ReversibleMigration):
        return migration.roll_back(run, export_dir, lock_timeout=lock_timeout)
    if not run.executing:
        plan = plan_drop(run, migration, include_dependents)
        return pd.DataFrame([{"check": "review mode: nothing was dropped", "result": "",
                              "observed": f"{len(plan.statements)} statements would run",
                              "expected": "mode='execute' to perform"}])
    run.require_open_gates()
    with run.connect(purpose=f"{run.notebook}:drop") as conn:
        result = perform_drop(conn, migration, export_dir, include_dependents,
                              lock_timeout=lock_timeout, show_progress=True)
    if result.committed:  # what the record must say, even if nothing else can be written
        journal.committed("the drop", result.dropped, rows_dropped(export_dir),
                          f"tables locked {result.lock_hold_ms:.0f} ms")
    frame = result.table()
    if result.committed:
        frame = pd.concat([frame, pd.DataFrame([{
            "check": "committed", "result": "PASS",
            "observed": f"tables locked {result.lock_hold_ms:.0f} ms; writes to them "
            f"blocked {result.writes_blocked_ms:.0f} ms", "expected": ""}])],
            ignore_index=True)
    # Attached last: pd.concat drops attrs its inputs do not share.
    frame.attrs["lock_hold_ms"] = result.lock_hold_ms
    frame.attrs["writes_blocked_ms"] = result.writes_blocked_ms
    return frame


def verify_application(run: Run, health_check_url: str, migration: Migration) -> pd.DataFrame:
    """The change set's checks (else every project table readable), then the health-check
    URL; VerificationFailed if any fails. Read-only."""
    return check_application(run, health_check_url, migration)
