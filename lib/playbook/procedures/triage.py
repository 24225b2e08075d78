"""Triage: the procedure document's decision tree, informed by what the database shows.

::

    Is the application completely broken?
    ├─ NO  → data corrupted in some tables? YES → restore those tables (31_restore_tables)
    │                                       NO  → try fix forward first
    └─ YES → Is data corrupted?
        ├─ NO  → more than one migration failed? YES → full restore (30_full_restore)
        │        can it be fixed forward?         YES → fix forward
        │        else → roll back the specific migration (10 or 20, chosen below)
        └─ YES → full database restore from backup (30_full_restore)

Which migration: the operator's report (``suspected_migration``) and the database's own
evidence (which of a migration's tables exist, their rows, the sequence's health). A
detected fault that a no-data-loss rollback repairs is recommended before a destructive
one ("Partial Rollback: can you rollback just one component?").

Triage only reads: nothing here writes to the database.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

from ..changesets.migration import MIGRATIONS_DIR, Migration, known_migrations
from ..db.names import QualifiedName, table_exists
from ..errors import ConfigurationError, ObjectNotFound
from ..gates import NO, YES, display_replacing, normalise_answer, require_answer_mapping
from ..project import PLAYBOOK_ROOT
from ..verification import orphaned_profiles
from .sequences import SequenceDiagnosis, diagnose

FULL_RESTORE = "30_full_restore"
RESTORE_TABLES = "31_restore_tables"

QUESTIONS: dict[str, str] = {
    "application_completely_broken": "Is the application completely broken?",
    "data_corrupted": "Is data corrupted?",
    "multiple_migrations_failed": "Did more than one migration fail, or did a rollback script "
    "already fail?",
    "forward_fix_possible": "Can the issue be fixed with a new migration (fix forward)?",
}
# What answering NO means, for the notebook and the parameters file.
NO_MEANS: dict[str, str] = {
    "application_completely_broken": "the application still works: fix forward, or restore "
    "only the damaged tables",
    "data_corrupted": "the data is intact: a rollback of the specific migration is enough",
    "multiple_migrations_failed": "one migration is at fault: roll back just that one",
    "forward_fix_possible": "no forward fix is possible: a rollback is justified",
}


# --- what the database shows ---------------------------------------------------------------


@dataclass
class SequenceHealth:
    """The id column's sequence as :func:`sequences.diagnose` reads it, or why it could
    not be read (no sequence at all is a fault too)."""

    diagnosis: SequenceDiagnosis | None
    missing: str = ""

    def problem(self) -> str:
        if self.diagnosis is None:
            return self.missing
        return "" if self.diagnosis.healthy else self.diagnosis.explanation()

    def summary(self) -> str:
        d = self.diagnosis
        return f"next id {d.next_value} > MAX(id) {d.max_id}" if d else ""


def sequence_health(conn: psycopg.Connection, table: QualifiedName,
                    column: str) -> SequenceHealth | None:
    """Read-only look at the sequence behind ``table.column`` (None if the table is gone)."""
    if not table_exists(conn, table):
        return None
    try:
        return SequenceHealth(diagnose(conn, table, column))
    except ObjectNotFound as exc:
        return SequenceHealth(None, exc.message)


@dataclass
class MigrationState:
    migration: Migration
    present: dict[str, int]  # table -> rows, for the migration's tables that exist
    sequence: SequenceHealth | None = None

    @property
    def applied(self) -> bool:
        return bool(self.present)

    @property
    def fault(self) -> str:
        return self.sequence.problem() if self.sequence else ""


@dataclass
class Evidence:
    """What triage read from the database, to inform (not replace) the operator's answers."""

    database: str
    states: list[MigrationState]
    orphaned_profiles: int | None

    def state(self, name: str) -> MigrationState:
        for state in self.states:
            if state.migration.name == name:
                return state
        raise ConfigurationError(
            f"suspected_migration {name!r} is not a migration this playbook knows. Nothing "
            "was changed.",
            next_step=f"use one of {', '.join(s.migration.name for s in self.states)}, or "
            "leave it empty to let the database decide.",
        )

    def table(self) -> pd.DataFrame:
        rows = []
        for state in self.states:
            m = state.migration
            for table in m.tables:
                rows.append({"migration": m.name, "looked at": f"table {table}",
                             "observed": (f"{state.present[str(table)]} rows"
                                          if str(table) in state.present else "does not exist"),
                             "meaning": "" if str(table) in state.present
                             else "not applied, or already rolled back"})
            if m.sequence_column:
                table, column = m.sequence_column
                rows.append({
                    "migration": m.name, "looked at": f"sequence of {table}.{column}",
                    "observed": ("(table missing)" if state.sequence is None
                                 else "healthy" if not state.fault else "FAULT"),
                    "meaning": state.fault or ("" if state.sequence is None
                                               else state.sequence.summary()),
                })
        rows.append({"migration": "(application)", "looked at": "orphaned profiles",
                     "observed": "n/a" if self.orphaned_profiles is None
                     else self.orphaned_profiles,
                     "meaning": "a sign of corrupted data" if self.orphaned_profiles else ""})
        return pd.DataFrame(rows, columns=["migration", "looked at", "observed", "meaning"])


def look_at_database(conn_or_run, folder: Path = MIGRATIONS_DIR) -> Evidence:
    """Which tables of each migration exist, their rows, the sequence's health, orphaned
    profiles. Takes a connection or a :class:`runs.Run` (then connects read-only)."""
    if isinstance(conn_or_run, psycopg.Connection):
        return _look(conn_or_run, folder)
    with conn_or_run.connect(read_only=True, purpose="triage") as conn:
        return _look(conn, folder)


def _look(conn: psycopg.Connection, folder: Path) -> Evidence:
    states = []
    for migration in known_migrations(folder):
        present = {}
        for table in migration.tables:
            if table_exists(conn, table):
                present[str(table)] = conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(table.identifier)).fetchone()[0]
        health = sequence_health(conn, *migration.sequence_column) \
            if migration.sequence_column else None
        states.append(MigrationState(migration, present, health))
    app = all(table_exists(conn, QualifiedName(*t)) for t in (("auth", "users"),
                                                                ("public", "profiles")))
    orphans = orphaned_profiles(conn) if app else None
    conn.rollback()
    return Evidence(conn.info.dbname, states, orphans)


# --- the decision --------------------------------------------------------------------------


@dataclass
class Recommendation:
    action: str
    notebook: str | None
    reason: str
    notes: list[str] = field(default_factory=list)

    def command(self, incident_id: str = "", operator: str = "") -> str:
        """The exact ``playbook run`` command (review mode first)."""
        if not self.notebook:
            return ""
        parts = ["playbook", "run", self.notebook, "--incident", incident_id or "INCIDENT-ID"]
        if Path("parameters", f"{self.notebook}.yaml").exists() or \
                (PLAYBOOK_ROOT / "parameters" / f"{self.notebook}.yaml").exists():
            parts += ["-f", f"parameters/{self.notebook}.yaml"]
        parts += ["-p", "mode", "review"]
        if operator:
            parts += ["--operator", operator]
        return shlex.join(parts)

    def markdown(self, incident_id: str = "", operator: str = "") -> str:
        lines = [f"### Recommended: {self.action}", "", self.reason, ""]
        if self.notebook:
            exists = (PLAYBOOK_ROOT / "notebooks" / f"{self.notebook}.ipynb").exists()
            lines += [f"Notebook: [{self.notebook}.ipynb]({self.notebook}.ipynb)"
                      + ("" if exists else " (not in this copy of the playbook yet)"), "",
                      "Run it in review mode first, then again with `-p mode execute "
                      "-p confirm_database <database>` and every gate answered knowingly:", "",
                      "```bash", self.command(incident_id, operator), "```"]
        else:
            lines.append("No rollback notebook is recommended.")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class Decision:
    path: list[tuple[str, str, str]]  # (question, answer, what it means)
    recommendation: Recommendation
    evidence: Evidence
    incident_id: str = ""
    operator: str = ""

    def path_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.path, columns=["question", "answer", "so"])

    def alternatives(self) -> pd.DataFrame:
        """The document's "consider these alternatives first", answered for this case."""
        rec = self.recommendation
        given = {q: a for q, a, _ in self.path}
        migration = next((s.migration for s in self.evidence.states
                          if s.migration.notebook == rec.notebook), None)
        partial = (f"yes: only {migration.name} is rolled back; other migrations and "
                   "application tables stay" if migration else
                   "yes: only the damaged tables are restored" if rec.notebook == RESTORE_TABLES
                   else "no: the whole database goes back to the backup"
                   if rec.notebook == FULL_RESTORE else "nothing is rolled back")
        if migration and migration.safety == "destructive":
            preserve = "yes: the notebook exports and verifies the data before dropping it"
        elif rec.notebook == FULL_RESTORE:
            preserve = "export data created after the backup first (Prepare for Restore)"
        elif rec.notebook == RESTORE_TABLES:
            preserve = "rows written since the backup are kept"
        else:
            preserve = "no data is lost"
        return pd.DataFrame([
            ("Fix Forward", "Can the issue be fixed with a new migration?",
             given.get(QUESTIONS["forward_fix_possible"], "not asked on this branch")),
            ("Partial Rollback", "Can you rollback just one component?", partial),
            ("Data Preservation", "Can you export data before rollback?", preserve),
        ], columns=["alternative", "question", "here"])

    def show_recommendation(self):
        """The recommendation as Markdown (link and command) for the notebook."""
        from IPython.display import Markdown

        return Markdown(self.recommendation.markdown(self.incident_id, self.operator))


class TriageQuestions:
    """The decision tree's questions as YES/NO widgets, pre-filled from ``answers``."""

    def __init__(self, answers: Mapping[str, object] | None, evidence: Evidence) -> None:
        answers = require_answer_mapping(answers or None)
        unknown = sorted(set(answers) - set(QUESTIONS))
        if unknown:
            raise ConfigurationError(
                f"answers names questions triage does not ask: {', '.join(unknown)}. Nothing "
                "was changed.", next_step=f"the triage questions are {', '.join(QUESTIONS)}.")
        self.given = {q: normalise_answer(q, answers.get(q)) for q in QUESTIONS}
        self.evidence = evidence
        self._widgets: dict = {}

    def hint(self, question: str) -> str:
        """What the database says about a question, if anything."""
        faults = [s.fault for s in self.evidence.states if s.fault]
        if question == "application_completely_broken" and faults:
            return "the database shows: " + "; ".join(faults)
        if question == "data_corrupted" and self.evidence.orphaned_profiles:
            return f"the database shows {self.evidence.orphaned_profiles} orphaned profiles"
        return ""

    def show(self) -> None:
        import ipywidgets as widgets

        rows = [widgets.HTML("<b>Rollback decision tree</b>: answer from what you see in "
                             "production; the database's evidence is shown beside.")]
        for qid, text in QUESTIONS.items():
            toggle = widgets.ToggleButtons(options=[("YES", YES), ("NO", NO)],
                                           value=self.given.get(qid))
            toggle.add_class(f"triage-{qid}")
            self._widgets[qid] = toggle
            hint = self.hint(qid)
            rows.append(widgets.VBox([
                widgets.HTML(f"{text} <code>{qid}</code> (NO: {NO_MEANS[qid]})"), toggle,
                *([widgets.HTML(f"&#x1F50E; {hint}")] if hint else [])]))
        display_replacing("triage", widgets.VBox(rows))

    def current(self) -> dict[str, str | None]:
        if self._widgets:
            return {q: self._widgets[q].value for q in QUESTIONS}
        return dict(self.given)

    def decide(self, suspected_migration: str = "", *, incident_id: str = "",
               operator: str = "") -> Decision:
        decision = decide(self.current(), self.evidence, suspected_migration)
        decision.incident_id, decision.operator = incident_id, operator
        return decision


def _undecided(path: list, evidence: Evidence, question: str) -> Decision:
    return Decision(path, Recommendation(
        "answer the triage questions",
        None,
        f"The question {question!r} ({QUESTIONS[question]}) is unanswered, so the tree "
        "cannot go further. Nothing was changed.",
        [f"answer it in the widget above, or pass answers={{'{question}': 'yes' or 'no'}}"],
    ), evidence)


def decide(answers: Mapping[str, str | None], evidence: Evidence,
           suspected_migration: str = "") -> Decision:
    """Walk the decision tree with ``answers`` (question id -> 'yes'/'no'/None)."""
    path: list[tuple[str, str, str]] = []

    def ask(qid: str) -> str | None:
        answer = answers.get(qid)
        if answer is not None:
            path.append((QUESTIONS[qid], answer.upper(),
                         NO_MEANS[qid] if answer == NO else ""))
        return answer

    broken = ask("application_completely_broken")
    if broken is None:
        return _undecided(path, evidence, "application_completely_broken")
    corrupted = ask("data_corrupted")
    if corrupted is None:
        return _undecided(path, evidence, "data_corrupted")
    if broken == NO and corrupted == YES:
        return Decision(path, Recommendation(
            "restore the damaged tables from a backup (partial rollback)", RESTORE_TABLES,
            "The application otherwise works but data in some tables is corrupted: restore "
            "just those tables (or rows) from a backup and keep what was written since, "
            "before considering the nuclear option.",
        ), evidence)
    if broken == NO:
        return Decision(path, Recommendation(
            "fix forward", None,
            "The application is not completely broken: try fix forward first (a new "
            "migration that repairs the issue). Rollback is a last resort.",
            _fault_notes(evidence),
        ), evidence)
    if corrupted == YES:
        return Decision(path, Recommendation(
            "full database restore from backup (nuclear option)", FULL_RESTORE,
            "The application is completely broken and data is corrupted: restore the whole "
            "database from a backup taken before the migration.",
            [f"if the corruption is limited to some tables, {RESTORE_TABLES} restores just "
             "those and keeps everything written since the backup; the full restore loses it"],
        ), evidence)
    multiple = ask("multiple_migrations_failed")
    if multiple is None:
        return _undecided(path, evidence, "multiple_migrations_failed")
    if multiple == YES:
        return Decision(path, Recommendation(
            "full database restore from backup (nuclear option)", FULL_RESTORE,
            "More than one migration failed, or a rollback script already failed: rollback "
            "scripts are no longer enough.",
        ), evidence)
    forward = ask("forward_fix_possible")
    if forward is None:
        return _undecided(path, evidence, "forward_fix_possible")
    if forward == YES:
        return Decision(path, Recommendation(
            "fix forward", None,
            "A new migration can fix the issue: fix forward. Only roll back when no forward "
            "fix is possible.", _fault_notes(evidence)), evidence)
    return Decision(path, choose_migration(evidence, suspected_migration), evidence)


def _fault_notes(evidence: Evidence) -> list[str]:
    return [f"the database shows: {s.fault} (a forward fix: {s.migration.title})"
            for s in evidence.states if s.fault]


def choose_migration(evidence: Evidence, suspected: str = "") -> Recommendation:
    """Which migration to roll back: a detected fault a safe rollback repairs first, then
    the migration the operator reports, if its objects are there to roll back."""
    suspected_state = evidence.state(suspected) if suspected else None
    faulty = [s for s in evidence.states if s.fault and s.migration.safety == "safe"]
    if faulty and (suspected_state is None or suspected_state not in faulty):
        state = faulty[0]
        notes = []
        if suspected_state is not None:
            notes.append(f"you reported {suspected}; roll that back only if the application is "
                         "still broken after this no-data-loss step (run triage again)")
        return Recommendation(
            f"roll back the specific migration: {state.migration.title}",
            state.migration.notebook,
            f"The database shows {state.fault}. Its rollback loses no data "
            f"(data loss: {state.migration.data_loss}), so it comes first.", notes)
    if suspected_state is None:
        present = [s.migration.name for s in evidence.states if s.applied]
        return Recommendation(
            "say which migration broke the application", None,
            "The database shows no fault a rollback repairs, and no migration was reported. "
            "Pass suspected_migration with the one that caused the failure.",
            [f"migrations whose tables exist: {', '.join(present) or 'none'}"])
    migration = suspected_state.migration
    if not suspected_state.applied:
        return Recommendation(
            "no rollback needed", None,
            f"None of the tables of {migration.name} exist in {evidence.database!r}: the "
            "migration was never applied or was already rolled back (the document's "
            "'relation does not exist').")
    notes = []
    if migration.safety == "destructive":
        rows = sum(suspected_state.present.values())
        notes.append(f"DESTRUCTIVE: {migration.data_loss} ({rows} rows now) is lost; the "
                     "notebook exports it first")
    if suspected_state.sequence is not None and not suspected_state.fault:
        notes.append("the database shows the sequence healthy")
    return Recommendation(f"roll back the specific migration: {migration.title}",
                          migration.notebook,
                          f"You reported {migration.name}, and its tables exist "
                          f"({', '.join(suspected_state.present)}).", notes)
