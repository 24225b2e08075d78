"""Notebook 30, Full Database Restore (the nuclear option).

The document's five steps: verify the backup exists (chosen, read to its end, restored
into a scratch database), prepare (who is connected, export the rows written after the
backup, the plan), restore, verify, restart the application (give connections back, and
optionally re-insert the exported rows). The plan and the restore are
:mod:`playbook.procedures.restore`; the backups :mod:`playbook.backups`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from .. import backups, flags, scratch_restore
from ..backups import Backup
from ..checklists import Checklist
from ..errors import ConfigurationError
from ..evidence import NOT_DONE, Evidence, checks_evidence
from ..exports import Manifest, verify_files
from ..gates import Gate, reject_unknown_answers
from ..procedures import restore
from ..runs import Run
from ..scratch_restore import TestRestore
from ..verification import Check, checks_table

PLATFORMS = ("self_hosted", "supabase")


# --- 1. verify backup exists ---------------------------------------------------------------


def list_backups(run: Run, backup_dir: str) -> pd.DataFrame:
    """Every pg_dump archive in ``backup_dir``, newest first, with when it was taken."""
    return backups.backups_table(backups.list_backups(backup_dir))


def choose_backup(run: Run, backup_dir: str, *, before: str = "",
                  backup_file: str = "") -> Backup:
    """``backup_file`` if given, else the newest backup taken before ``before``."""
    return backups.choose_backup(backup_dir, before=before, backup_file=backup_file)


def prove_readable(run: Run, backup: Backup) -> pd.DataFrame:
    """pg_restore reads the archive to its end; refused when it cannot."""
    return backups.prove_readable(backup).require().table()


def prove_restorable(run: Run, backup: Backup, *, enabled: bool, scratch_url_env: str = "",
                     jobs: int = 2) -> TestRestore | None:
    """*Backup has been tested and can be restored*: restore it into a scratch database
    (the target's server unless ``scratch_url_env`` names another) and compare every count
    with the archive's; refused when they differ. None when the operator turned it off."""
    if not flags.flag(enabled, "test_restore"):
        return None
    server = scratch_restore.scratch_server_url(scratch_url_env, run.url())
    return scratch_restore.prove_restorable(backup, server, jobs=jobs, show_progress=True)


# --- 2. prepare for restore ----------------------------------------------------------------


def who_is_connected(run: Run) -> pd.DataFrame:
    """The sessions on the target now (the application's, and anyone else's)."""
    with run.connect(read_only=True) as conn:
        return restore.who_is_connected(conn)


def export_data_created_after_backup(run: Run, backup: Backup, export_dir: str) -> Manifest:
    """Every row written after the backup's time, to CSV with counts and SHA-256, in one
    snapshot (read-only for the database)."""
    with run.connect(read_only=True) as conn:
        return restore.export_rows_after_backup(conn, backup,
                                                restore.export_folder(run, export_dir))


def exported_files(run: Run, manifest: Manifest) -> pd.DataFrame:
    """The export's files, rows and SHA-256, as its manifest lists them."""
    return pd.DataFrame([{"table": f.table, "file": f.file, "rows": f.rows, "bytes": f.bytes,
                          "sha256": f.sha256[:16] + "..."} for f in manifest.files],
                        columns=["table", "file", "rows", "bytes", "sha256"])


def plan_restore(run: Run, backup: Backup, *, strategy: str, jobs: int,
                 block_connections: bool, terminate_connections: bool,
                 platform: str = "self_hosted") -> restore.RestorePlan:
    """*Document current state*: the restore for the run's target, step by step, as it will
    run. On the Supabase platform the restore itself is done in the dashboard
    (checklist), so the plan has no statements."""
    if platform not in PLATFORMS:
        raise ConfigurationError(
            f"platform must be 'self_hosted' or 'supabase', got {platform!r}. Nothing was "
            "changed.", next_step="'supabase' when the backups live in the Supabase dashboard.")
    block_connections = flags.flag(block_connections, "block_connections")
    terminate_connections = flags.flag(terminate_connections, "terminate_connections")
    with run.connect(read_only=True) as conn:
        plan = restore.plan_restore(conn, run.url(), backup, strategy=strategy, jobs=jobs,
                                    block_connections=block_connections,
                                    terminate_connections=terminate_connections)
        plan.platform = platform
        if platform == "supabase":
            plan.steps, plan.reopen = [], []
        plan.rendered = plan.table(conn)
    return plan


# --- the gate ------------------------------------------------------------------------------

GATE_QUESTIONS = {
    "backup_before_migration": "A backup exists, taken BEFORE the migration, and is readable",
    "backup_restore_tested": "That backup has been tested and can be restored",
    "after_backup_data_exported": "Data created AFTER the backup has been exported",
    "no_other_way": "Multiple migrations failed / data is corrupted / the rollback scripts "
                    "don't work: there is NO other way",
    "data_loss_understood": "You understand what data will be lost (every row written after "
                            "the backup)",
    "team_notified": "The team and the users are notified of the downtime",
    "maintenance_window_scheduled": "A maintenance window is scheduled",
}


def gate(run: Run, backup: Backup, tested: TestRestore | None, manifest: Manifest) -> Gate:
    """The prerequisites and the document's STOP questions; the ones a check can answer
    carry its evidence, and a failed check closes the gate whatever was answered."""
    asked = Gate("Full database restore", GATE_QUESTIONS, run.answers)
    reject_unknown_answers(run.answers, asked)
    asked.verify("backup_before_migration", backup.usable,
                 f"{backup.path.name}, taken {backups.shown_time(backup.taken_at)} UTC")
    asked.verify("backup_restore_tested", tested is not None and tested.passed,
                 tested.in_words() if tested else "test_restore=False: not tested in this run")
    folder = Path(manifest.extra.get("folder", ""))
    problems = verify_files(folder, manifest) if folder.parts else []
    rows = sum(f.rows for f in manifest.files)
    asked.verify("after_backup_data_exported", not problems,
                 "; ".join(problems) or f"{rows} rows in {len(manifest.files)} files, "
                 "checksums in manifest.json")
    asked.verify("data_loss_understood", True,
                 f"{rows} rows written after the backup would be lost (exported above)")
    return run.add_gate(asked)


# --- 3. restore from backup ----------------------------------------------------------------


def dashboard_checklist(run: Run, platform: str, checklist_answers=None) -> Checklist:
    """The Supabase dashboard steps as ticked widgets (shown only for that platform),
    pre-filled from ``checklist_answers``."""
    checklist = Checklist("supabase_dashboard_restore", answers=checklist_answers)
    if platform == "supabase":
        checklist.show()
    else:
        print("Self-hosted: the restore runs pg_restore below; no dashboard steps.")
    return checklist


def restore_from_backup(run: Run, plan: restore.RestorePlan,
                        checklist: Checklist | None = None) -> restore.RestoreResult:
    """pg_restore (self-hosted) when executing; on the Supabase platform, the dashboard
    checklist is recorded and must be complete before verification runs."""
    if plan.platform == "supabase":
        checklist.record()
        if run.executing:
            checklist.require_done()
        return restore.RestoreResult(plan, executed=False)
    if run.executing:
        run.require_open_gates()
    return restore.restore_database(plan, execute=run.executing, show_progress=True)


# --- 4. verify restore ---------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreVerification:
    """Step 4's checks, and how long after the run's start they ran."""

    executed: bool
    checks: list[Check]
    seconds_from_start: float
    plan: restore.RestorePlan

    def evidence(self) -> Evidence:
        return checks_evidence(self.checks) if self.executed else NOT_DONE

    def table(self) -> pd.DataFrame:
        shown = checks_table(self.checks)
        shown.attrs["seconds_from_start"] = self.seconds_from_start
        return shown


def verify_restore(run: Run, plan: restore.RestorePlan,
                   tested: TestRestore | None) -> RestoreVerification:
    """The document's verification queries; in review mode, what they find now (the
    damaged state) so the operator sees what the restore will change."""
    with run.connect(read_only=True) as conn:
        # In place, CONNECT stays revoked until step 5 gives it back (and checks it there).
        acl = plan.database_acl_before if plan.strategy == "swap" else None
        checks = restore.verify_restore(conn, plan.backup, tested, acl)
    elapsed = (datetime.now(UTC) - run.started_at).total_seconds()
    return RestoreVerification(run.executing, checks, elapsed, plan)


def require_verified(run: Run, verified: RestoreVerification) -> str:
    """Raise VerificationFailed after an executed restore whose checks failed."""
    if verified.executed:
        restore.require_restored(verified.checks, verified.plan)
        return (f"Restore verified: every check passed, {verified.seconds_from_start:.0f}s "
                "after the run started.")
    failed = sum(not c.passed for c in verified.checks)
    return (f"Review mode: nothing was restored; {failed} check(s) fail on the current "
            "database (what the restore would fix).")


# --- 5. restart application ----------------------------------------------------------------


def reopen_connections(run: Run, plan: restore.RestorePlan) -> pd.DataFrame:
    """Let the application connect again (in place with block_connections: give back
    exactly the CONNECT grants that were taken)."""
    return restore.reopen_connections(plan, execute=run.executing)


def reimport_rows_after_backup(run: Run, plan: restore.RestorePlan, export_dir: str, *,
                               enabled: bool) -> pd.DataFrame:
    """Review (always) and, when executing with ``enabled``, re-insert the rows written
    after the backup."""
    enabled = flags.flag(enabled, "reimport_after_backup_rows")
    if run.executing and enabled:
        run.require_open_gates()
    with run.connect() as conn:
        return restore.reimport_rows(conn, restore.export_folder(run, export_dir),
                                     execute=run.executing and enabled)
