"""Notebook 10, Rollback Script 1: the sequence behind an id column.

Four steps, as the document has them: verify the issue, run the rollback (its dry run
first), verify, recovery (the change set's forward script). The diagnosis and the
statements come from :mod:`playbook.procedures.sequences`; this module runs them in the
transactions the procedure needs. In review mode nothing is changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pglast

from .. import journal
from ..changesets.migration import Migration, load_migration
from ..db.names import parse_column_name, parse_table_name
from ..db.queries import run_script, translated_errors
from ..errors import ConfigurationError
from ..evidence import Evidence, checks_evidence
from ..gates import Gate, reject_unknown_answers
from ..procedures.sequences import (
    DEFAULT_CHANGE_SET,
    DEFAULT_COLUMN,
    DEFAULT_TABLE,
    ResetPlan,
    SequenceDiagnosis,
    begin_change,
    diagnose,
    require_verified,
    reset_plan,
    verification_checks,
)
from ..runs import Run
from ..verification import Check, checks_table

GATE_QUESTIONS = {
    "issue_confirmed": "You have seen the symptom: IDs generating incorrectly, or null / "
    "duplicate id errors on inserts into the table (the catalog's diagnosis is shown beside "
    "this answer).",
    "team_notified": "The team is notified of the rollback plan.",
}


def verify_the_issue(run: Run, table: str = DEFAULT_TABLE,
                     column: str = DEFAULT_COLUMN) -> SequenceDiagnosis:
    """Step 1, "Verify the issue": parse the names, then read everything read-only."""
    target, column_name = parse_table_name(table), parse_column_name(column)
    with run.connect(read_only=True, purpose=f"{run.notebook}:diagnose") as conn:
        return diagnose(conn, target, column_name)


def plan_rollback(run: Run, diagnosis: SequenceDiagnosis) -> ResetPlan:
    """The dry run: the statements step 2 will run, built by the very function that
    execute mode runs them from (nothing is run here)."""
    return reset_plan(diagnosis)


def gate(run: Run, diagnosis: SequenceDiagnosis,
         answers: Mapping[str, object] | None = None) -> Gate:
    """The questions before the reset, with the catalog's diagnosis beside the first. A
    healthy diagnosis does not close the gate: the reset then changes nothing, and re-running
    a safe rollback must stay possible."""
    answers = run.answers if answers is None else answers
    asked = Gate("Sequence reset", GATE_QUESTIONS, answers)
    reject_unknown_answers(answers, asked)
    asked.verify("issue_confirmed", True,
                 f"catalog: {diagnosis.diagnosis}" + ("" if not diagnosis.healthy
                                                       else " (the reset will change nothing)"))
    return run.add_gate(asked)


@dataclass
class RollbackOutcome:
    mode: str
    plan: ResetPlan
    before: SequenceDiagnosis
    after: SequenceDiagnosis | None
    checks: list[Check]
    summary: str

    def evidence(self) -> Evidence:
        return checks_evidence(self.checks, self.summary)

    def table(self) -> pd.DataFrame:
        rows = [("result", self.summary)]
        rows += [(f"statement {i}", s.text()) for i, s in enumerate(self.plan.steps, 1)]
        for label, attr in (("last_value", "last_value"), ("is_called", "is_called"),
                            ("next value", "next_value"), ("column default", "column_default"),
                            ("MAX(id)", "max_id"), ("diagnosis", "diagnosis")):
            after = getattr(self.after, attr) if self.after else "(unchanged: review mode)"
            rows.append((f"{label}: before -> after",
                         f"{_shown_any(getattr(self.before, attr))} -> {_shown_any(after)}"))
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def _shown_any(value: object) -> str:
    return "(none)" if value is None else str(value)


def run_rollback(run: Run, diagnosis: SequenceDiagnosis) -> RollbackOutcome:
    """Step 2, "Run rollback": in execute mode, one transaction that locks, diagnoses
    again (the data may have moved since step 1), runs :func:`reset_plan`, verifies and
    only then commits. In review mode nothing is run and the plan is returned."""
    if not run.executing:
        plan = reset_plan(diagnosis)
        return RollbackOutcome("review", plan, diagnosis, None, [],
                               "review mode: nothing was changed; execute mode would run the "
                               "statements below" if plan.steps else
                               "review mode: nothing to do, nothing was changed")
    run.require_open_gates()
    with run.connect(purpose=f"{run.notebook}:rollback") as conn, translated_errors(conn):
        with conn.transaction():
            begin_change(conn, diagnosis.target)
            before = diagnose(conn, diagnosis.target, diagnosis.column)
            plan = reset_plan(before)
            for step in plan.steps:
                conn.execute(step.statement)
            after = diagnose(conn, diagnosis.target, diagnosis.column)
            checks = verification_checks(conn, after)
            require_verified(checks, after, "The sequence reset")
    summary = (f"reset committed: {before.diagnosis} -> {after.diagnosis}" if plan.steps
               else "already healthy: nothing to reset, nothing was changed")
    if plan.steps:
        journal.committed("the sequence reset", [str(before.sequence), str(before.target)],
                          {}, f"{before.diagnosis} -> {after.diagnosis}, next id "
                          f"{after.next_value}")
    return RollbackOutcome("execute", plan, before, after, checks, summary)


@dataclass
class Verification:
    mode: str
    diagnosis: SequenceDiagnosis
    checks: list[Check]

    def evidence(self) -> Evidence:
        return checks_evidence(self.checks)

    def table(self) -> pd.DataFrame:
        return checks_table(self.checks)


def verify_rollback(run: Run, diagnosis: SequenceDiagnosis) -> Verification:
    """Step 3, "Verify rollback". Execute mode: under the locks, checks plus a test insert
    that is rolled back (and its id handed back); raises VerificationFailed on a failure.
    Review mode: the read-only checks, shown but not raised (the issue is expected to be
    there, since nothing was run)."""
    if not run.executing:
        with run.connect(read_only=True, purpose=f"{run.notebook}:verify") as conn:
            now = diagnose(conn, diagnosis.target, diagnosis.column)
            return Verification("review", now, verification_checks(conn, now, test_insert=False))
    with run.connect(purpose=f"{run.notebook}:verify") as conn, translated_errors():
        with conn.transaction():
            begin_change(conn, diagnosis.target)
            now = diagnose(conn, diagnosis.target, diagnosis.column)
            checks = verification_checks(conn, now)
            require_verified(checks, now, "Verification")
    return Verification("execute", now, checks)


@dataclass
class Recovery:
    status: str
    change_set: Migration
    checks: list[Check]

    def table(self) -> pd.DataFrame:
        statements = pglast.split(self.change_set.deploy.read_text())
        rows = [("status", self.status), ("forward script", self.change_set.deploy.name)]
        rows += [(f"statement {i}", " ".join(s.split())) for i, s in enumerate(statements, 1)]
        rows += [(f"check: {c.name}", f"{'PASS' if c.passed else 'FAIL'} ({c.observed})")
                 for c in self.checks]
        return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def recover(run: Run, diagnosis: SequenceDiagnosis, *, run_recovery: bool = False,
                     change_set: str | Path | Migration = DEFAULT_CHANGE_SET) -> Recovery:
    """Step 4, "Recovery": re-apply ``change_set``'s forward script (a change set naming
    the ``table``/``column`` it repairs). Only in execute mode with ``run_recovery``; one
    transaction with the locks, verified before COMMIT."""
    if not isinstance(change_set, Migration):
        change_set = load_migration(change_set)
    if change_set.sequence_column is None:
        raise ConfigurationError(
            f"The change set {change_set.name} does not name the id column its forward script "
            "repairs. Nothing was changed.",
            next_step="add `table:` and `column:` to its migration.yaml.")
    table, column = change_set.sequence_column
    if not (run.executing and run_recovery):
        why = "review mode" if not run.executing else "run_recovery is False"
        return Recovery(f"not run ({why}); set run_recovery=True in execute mode to re-apply",
                        change_set, [])
    if (diagnosis.target, diagnosis.column) != (table, column):
        raise ConfigurationError(
            f"The forward script {change_set.deploy.name} repairs {table}.{column}, not "
            f"{diagnosis.target}.{diagnosis.column}. Nothing was "
            "changed.",
            next_step="run recovery with the change set's own table and column.",
        )
    run.require_open_gates()
    with run.connect(purpose=f"{run.notebook}:recovery") as conn, translated_errors():
        with conn.transaction():
            begin_change(conn, table)
            run_script(conn, change_set.deploy)
            after = diagnose(conn, table, column)
            checks = verification_checks(conn, after)
            require_verified(checks, after, "The re-applied forward script")
    journal.committed("the sequence recovery", [change_set.deploy.name, str(after.sequence)],
                      {}, after.diagnosis)
    return Recovery(f"forward script re-applied and committed: {after.diagnosis}",
                    change_set, checks)

