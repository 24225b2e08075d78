"""Notebook 31, restore tables: bring back only the damaged rows of chosen tables from a
backup (the partial rollback for damaged data).

Restore the backup into a scratch database, diff the chosen tables (backup against live,
exported), the repair as it will run, the gate, repair in one transaction, verify, drop
the scratch database. The diff is :mod:`playbook.procedures.table_diff`, the repair
:mod:`playbook.procedures.table_repair`, the backup kinds :mod:`playbook.supabase_dumps`.
"""

from __future__ import annotations

import atexit
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psycopg

from .. import backup_kinds, flags, journal, supabase_dumps
from ..backups import shown_time
from ..errors import ConfigurationError
from ..gates import Gate, reject_unknown_answers
from ..procedures import table_diff
from ..procedures.table_repair import (
    MISSING,
    RepairPlan,
    RepairResult,
    diff_export_folder,
    execute_repair,
)
from ..procedures.table_repair import plan_repair as plan_table_repair
from ..runs import Run
from ..verification import Check, application_checks, checks_table

GATE_QUESTIONS = {
    "backup_before_damage": "The chosen backup was taken BEFORE the damage (its time is shown).",
    "team_notified": "The team has been notified of this repair.",
    "diff_reviewed": "You reviewed the diff above: the rows to bring back are the damaged ones, "
                     "and the rows added since the backup are to be kept.",
    "changed_after_backup_reverted": "The changed rows modified AFTER the backup (a later "
                                     "updated_at, counted in the diff) are damage to put back, "
                                     "not legitimate writes to keep (to keep them, choose the "
                                     "strategy `missing` for their table).",
}


# --- 1. restore the backup into a scratch database --------------------------------------------


@dataclass(frozen=True)
class ScratchCopy:
    """The backup restored into a scratch database, for the rest of the run."""

    restored: supabase_dumps.RestoredBackup
    keep_scratch: bool

    def connect(self) -> psycopg.Connection:
        return self.restored.scratch.connect(purpose="31_restore_tables:scratch")


def restore_backup(run: Run, backup_file: str, backup_kind: str = "auto",
                   scratch_url_env: str = "", keep_scratch: bool = False,
                   workdir: Path | None = None, *, tables: Sequence[str] = (),
                   schemas: Sequence[str] = ()) -> ScratchCopy:
    """Read and restore the backup into a new scratch database. Errors that cannot matter
    to the chosen ``tables`` (else every table of ``schemas``) are counted and shown; a
    chosen table that does not restore whole stops here. Unless ``keep_scratch``, the
    scratch database (and its placeholder roles) is dropped at the end of the run, even
    when the run stops at the gate."""
    keep_scratch = flags.flag(keep_scratch, "keep_scratch")
    if not backup_file:
        raise ConfigurationError(
            "backup_file is empty. Nothing was changed.",
            next_step="set backup_file to a pg_dump archive, a Supabase .backup(.gz) file or "
            "the folder of roles.sql/schema.sql/data.sql.")
    backup = backup_kinds.read_any_backup(Path(backup_file), backup_kind)
    restored = supabase_dumps.restore_to_scratch(backup, scratch_url_env, workdir=workdir,
                                                 tables=tables, schemas=schemas,
                                                 show_progress=True)
    if not keep_scratch:
        atexit.register(_drop_quietly, restored.scratch)
    return ScratchCopy(restored, keep_scratch)


def _drop_quietly(scratch: supabase_dumps.Scratch) -> None:
    try:
        scratch.drop()
    except Exception:  # noqa: BLE001 - best effort at interpreter exit
        pass


# --- 2. diff the chosen tables -----------------------------------------------------------------


def diff_tables(run: Run, copy: ScratchCopy, tables: Sequence[str], schemas: Sequence[str],
                export_dir: str | Path) -> table_diff.DiffReport:
    """Diff the chosen tables, backup against live, and export them (review and execute
    alike)."""
    if not isinstance(tables, list | tuple) or not isinstance(schemas, list | tuple):
        raise ConfigurationError("tables and schemas must be lists of names. Nothing was "
                                 "changed.")
    folder = diff_export_folder(run, export_dir)
    with copy.connect() as scratch, run.connect(read_only=True) as live:
        chosen = table_diff.chosen_tables(scratch, tables, schemas)
        return table_diff.diff_tables(scratch, live, chosen, folder,
                                      backup_taken_at=copy.restored.backup.taken_at,
                                      show_progress=True, expected_rows=copy.restored.counts)


# --- 3. the repair, as it will run ----------------------------------------------------------


def plan_repair(run: Run, report: table_diff.DiffReport, strategy: Mapping[str, str],
                replace_despite_new_rows: Sequence[str]) -> RepairPlan:
    """Each table's strategy (missing, missing+changed, replace), checked against the diff."""
    with run.connect(read_only=True) as live:
        return plan_table_repair(live, report, strategy, replace_despite_new_rows)


def repair_statements(run: Run, plan: RepairPlan) -> pd.DataFrame:
    """The statements execute mode runs, rendered by the target's session."""
    with run.connect(read_only=True) as live:
        return plan.statements_table(live)


# --- the gate ------------------------------------------------------------------------------


def gate(run: Run, copy: ScratchCopy, plan: RepairPlan,
         answers: Mapping[str, object] | None = None) -> Gate:
    """The questions before the repair, with the backup's time, the refused strategies and
    the rows modified after the backup as evidence."""
    answers = run.answers if answers is None else answers
    asked = Gate("surgical restore", GATE_QUESTIONS, answers)
    reject_unknown_answers(answers, asked)
    backup = copy.restored.backup
    asked.verify("backup_before_damage", True,
                 f"{backup.path.name} taken {shown_time(backup.taken_at)} UTC, restored into "
                 f"scratch: {sum(copy.restored.counts.values()):,} rows")
    refused = [p.refused for p in plan.tables if p.refused]
    asked.verify("diff_reviewed", not refused, "; ".join(refused) or "every strategy is allowed")
    asked.verify("changed_after_backup_reverted", True, changed_after_backup_evidence(plan))
    return run.add_gate(asked)


def changed_after_backup_evidence(plan: RepairPlan) -> str:
    """What the repair would put back among rows modified after the backup, per table."""
    parts = []
    for item in plan.tables:
        diff = item.diff
        if item.strategy == MISSING or not diff.shape.has_key or not diff.changed:
            continue
        if diff.changed_after_backup is None:
            parts.append(f"{diff.table}: {diff.changed} changed row(s) reverted; when they were "
                         "modified cannot be told (no updated_at-like column)")
        elif diff.changed_after_backup:
            parts.append(f"{diff.table}: {diff.changed_after_backup} of {diff.changed} changed "
                         f"row(s) to revert were modified after the backup "
                         f"({diff.shape.modified_column} later)")
    return "; ".join(parts) or "no row to revert was modified after the backup"


# --- 4. repair ---------------------------------------------------------------------------------


def repair(run: Run, copy: ScratchCopy, plan: RepairPlan) -> RepairResult:
    """Execute mode repairs, in one transaction verified before COMMIT; review mode
    changes nothing and says so."""
    if not run.executing:
        return RepairResult([], {}, [], committed=False)
    plan.require_allowed()
    run.require_open_gates()
    with copy.connect() as scratch, run.connect(purpose="31_restore_tables") as live:
        result = execute_repair(scratch, live, plan, show_progress=True)
    changed = {t: c for t, c in result.written.items() if any(c.values())}
    journal.committed("the repair", list(changed), {t: sum(c.values()) for t, c in changed.items()},
                      "; ".join(f"{t}: " + ", ".join(f"{n} {k}" for k, n in c.items() if n)
                                for t, c in changed.items()))
    return result


# --- 5. verify ---------------------------------------------------------------------------------


def verify(run: Run, copy: ScratchCopy, report: table_diff.DiffReport, plan: RepairPlan,
           checks_tables: Sequence[str] = ()) -> pd.DataFrame:
    """The document's checks (the application's tables readable: ``checks_tables``, else
    those of the demo's that exist; users with profiles and no orphaned profiles when both
    tables exist) and the chosen tables against the backup, as pass/fail."""
    if not isinstance(checks_tables, list | tuple):
        raise ConfigurationError("checks must be a list of table names. Nothing was changed.",
                                 next_step="e.g. checks: [auth.users, public.profiles]")
    checks: list[Check] = []
    with copy.connect() as scratch, run.connect(read_only=True) as live:
        checks += application_checks(live, tables=list(checks_tables))
        tables = [d.table for d in report.diffs]
        now = table_diff.diff_tables(scratch, live, tables, None, show_progress=True,
                                     expected_rows=copy.restored.counts)
        for diff in now.diffs:
            chosen = next(p for p in plan.tables if str(p.diff.table) == str(diff.table))
            if not run.executing:
                continue
            if diff.shape.has_key:
                checks.append(Check(f"{diff.table}: rows deleted since the backup are back",
                                    diff.deleted == 0, diff.deleted, 0))
                if chosen.strategy != MISSING:
                    checks.append(Check(f"{diff.table}: changed rows have the backup's values",
                                        diff.changed == 0, diff.changed, 0))
    return checks_table(checks)


def finish(run: Run, copy: ScratchCopy) -> pd.DataFrame:
    """Drop the scratch database unless asked to keep it."""
    scratch = copy.restored.scratch
    if copy.keep_scratch:
        state = f"kept: {scratch.describe()}"
    else:
        left = scratch.drop()
        state = f"dropped: {scratch.describe()}"
        if left:
            state += f"; placeholder roles still used elsewhere, left: {', '.join(left)}"
        elif copy.restored.script and copy.restored.script.roles_created:
            state += "; its placeholder roles removed"
    return pd.DataFrame([("scratch database", state)], columns=["", "value"]).set_index("")
