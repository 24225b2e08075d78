"""The procedure document's checklists as recorded checkboxes.

Two calls in a notebook::

    checklist = Checklist("before_rollback", answers=checklist_answers)
    checklist.show()        # JupyterLab: one Checkbox per item, pre-filled from answers

and, in the next cell::

    checklist.record()      # a table of item / done / time, kept in the executed notebook

``record()`` also leaves an ``application/json`` output under the key
:data:`RECORD_KEY`, so the post-mortem timeline reads the checklist back from the record
and lists every item left open as a follow-up. A checklist is a record, not a gate: an
open item never stops a run (the gates do that).

Items the playbook verifiably did itself in this run (an export checked against its
manifest, a backup test-restored, the rollback committed after its checks passed) are
ticked by the playbook, with the time and the evidence (:func:`for_run`,
:meth:`Checklist.tick_done_by_playbook`); the table's ``by`` column says who ticked what.
Steps done on another system (the Supabase dashboard restore) use the same class, and
:meth:`Checklist.require_done` stops a step that needs them all done.

``answers`` is the notebook's ``checklist_answers`` parameter: item ids mapped to
yes/no (or true/false), either flat (``{"backup_verified": "yes"}``, ids are unique
across all checklists) or per checklist (``{"before_rollback": {"backup_verified":
"yes"}}``). An id no checklist knows is a typo and refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from . import journal
from .errors import ConfigurationError, PreconditionFailed
from .evidence import (
    NOT_DONE,
    Evidence,
    ShowsEvidence,
    checks_table_evidence,
    export_evidence,
)
from .exports import Manifest
from .gates import YES, display_replacing, normalise_answer, require_answer_mapping
from .journal import EXPORT_VERIFIED, VERIFICATION, json_outputs

RECORD_KEY = "playbook_checklist"
OPERATOR, PLAYBOOK = "operator", "playbook"

# name -> (title, {item id: the document's words}); ids are unique across checklists.
CHECKLISTS: dict[str, tuple[str, dict[str, str]]] = {
    "prerequisites": ("Prerequisites (before performing any rollback)", {
        "backup_exists_and_recent": "Database backup exists and is recent",
        "backup_restore_tested": "Backup has been tested and can be restored",
        "team_notified_of_plan": "Team is notified of rollback plan",
        "maintenance_window_scheduled": "Maintenance window is scheduled",
        "rollback_scripts_reviewed": "Rollback scripts have been reviewed",
        "data_loss_understood": "You understand what data will be lost",
    }),
    "before_rollback": ("Rollback checklist: before rollback", {
        "backup_verified": "Database backup verified",
        "backup_tested": "Backup tested and can be restored",
        "team_notified": "Team notified",
        "maintenance_window": "Maintenance window scheduled",
        "scripts_reviewed": "Rollback scripts reviewed",
        "data_export_completed": "Data export completed (if applicable)",
        "alternatives_considered": "Alternative fixes considered",
        "procedure_documented": "Rollback procedure documented",
        "recovery_plan_documented": "Recovery plan documented",
    }),
    "during_rollback": ("Rollback checklist: during rollback", {
        "application_stopped": "Application stopped (prevent new writes)",
        "rollback_executed": "Rollback script executed",
        "verification_run": "Verification queries run",
        "results_documented": "Results documented",
        "errors_logged": "Errors logged",
    }),
    "after_rollback": ("Rollback checklist: after rollback", {
        "application_restarted": "Application restarted",
        "critical_functionality_tested": "Critical functionality tested",
        "users_notified": "Users notified",
        "incident_documented": "Incident documented",
        "root_cause_analyzed": "Root cause analyzed",
        "prevention_plan_created": "Prevention plan created",
    }),
    "post_rollback_immediately": ("Post-rollback actions: immediately", {
        "application_verified_working": "Verify application is working",
        "users_notified_restored": "Notify users service is restored",
        "monitoring_for_errors": "Monitor for errors",
        "what_happened_documented": "Document what happened",
    }),
    "post_rollback_24_hours": ("Post-rollback actions: within 24 hours", {
        "root_cause_analysis": "Analyze root cause",
        "fix_forward_plan": "Create fix-forward plan",
        "fix_tested_in_development": "Test fix in development",
        "redeployment_scheduled": "Schedule re-deployment",
    }),
    "post_rollback_week": ("Post-rollback actions: within 1 week", {
        "post_mortem_held": "Conduct post-mortem",
        "procedures_updated": "Update procedures",
        "testing_improved": "Improve testing",
        "recurrence_prevented": "Prevent recurrence",
    }),
    "recovery": ("Rollback Script 2: Recovery", {
        "migration_reapplied": "Re-apply migration",
        "data_restored_from_export": "Restore data from backup (if you exported it)",
        "sequences_fixed": "Fix sequences",
    }),
    "supabase_dashboard_restore": ("Full restore: restore from backup in the Supabase Dashboard", {
        "dashboard_backups_opened": "Log into the Supabase Dashboard: Project -> Database -> "
                                    "Backups",
        "dashboard_backup_chosen": "Find the backup from BEFORE the migration; note its timestamp",
        "dashboard_restore_clicked": "Click \"Restore\" on that backup",
        "dashboard_restore_confirmed": "Confirm the restoration",
        "dashboard_restore_completed": "Wait until the dashboard says the restore completed",
    }),
    "restart_application": ("Full restore: restart application", {
        "env_points_at_restored_database": "Ensure .env.production's DATABASE_URL points at "
                                           "the restored database",
        "application_restart_commands_run": "Restart the application (deployment-specific "
                                            "commands)",
        "login_tested": "Test: login",
        "virtues_viewed": "Test: view virtues",
        "journal_entry_created": "Test: create a journal entry",
        "logs_checked_for_errors": "Check for errors (the application's logs)",
    }),
}

# The document's closing lists, shown and recorded together at the end of a notebook.
CLOSING = ("after_rollback", "post_rollback_immediately", "post_rollback_24_hours",
           "post_rollback_week")
# Items whose ticking by the playbook is a moment of the run's timeline.
MOMENTS = {"data_export_completed": EXPORT_VERIFIED, "verification_run": VERIFICATION}
# Lists of things a change does: the playbook ticks them only for an executed change.
DONE_ONLY_WHEN_EXECUTING = ("during_rollback", "recovery")


def _item_owner() -> dict[str, str]:
    return {item: name for name, (_, items) in CHECKLISTS.items() for item in items}


def answers_for(name: str, answers: Mapping[str, object] | None) -> dict[str, bool]:
    """The items of checklist ``name`` answered in ``answers`` (flat or nested), as
    done True/False. Unknown ids and checklist names are refused (typos)."""
    if name not in CHECKLISTS:
        raise ConfigurationError(
            f"There is no checklist {name!r}. Nothing was changed.",
            next_step=f"use one of {', '.join(CHECKLISTS)}.",
        )
    answers = require_answer_mapping(answers, "checklist_answers", "item id")
    owner = _item_owner()
    unknown = [key for key in answers if key not in owner and key not in CHECKLISTS]
    for key, value in answers.items():
        if key in CHECKLISTS:
            if not isinstance(value, Mapping):
                raise ConfigurationError(
                    f"checklist_answers[{key!r}] must map item ids to yes/no. Nothing was "
                    "changed.",
                    next_step="write it as {item_id: yes}.",
                )
            unknown += [f"{key}.{item}" for item in value if item not in CHECKLISTS[key][1]]
    if unknown:
        raise ConfigurationError(
            f"checklist_answers names items no checklist has: {', '.join(sorted(unknown))}. "
            "Nothing was changed.",
            next_step=f"the items of {name!r} are {', '.join(CHECKLISTS[name][1])}.",
        )
    given: dict[str, object] = {k: v for k, v in answers.items() if owner.get(k) == name}
    nested = answers.get(name)
    if isinstance(nested, Mapping):
        given.update(nested)
    return {item: normalise_answer(item, value) == YES for item, value in given.items()}


@dataclass
class Checklist:
    """One of the document's checklists, ticked in widgets, pre-filled by parameters, or
    ticked by the playbook for what it did itself (with the evidence)."""

    name: str
    answers: Mapping[str, object] | None = None
    done: dict[str, bool] = field(init=False)
    ticked_at: dict[str, datetime] = field(init=False, default_factory=dict)
    ticked_by: dict[str, str] = field(init=False, default_factory=dict)
    evidence: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        prefilled = answers_for(self.name, self.answers)
        now = datetime.now(UTC)
        self.done = {item: prefilled.get(item, False) for item in self.items}
        self.ticked_at = {item: now for item, done in self.done.items() if done}
        self.ticked_by = {item: OPERATOR for item, done in self.done.items() if done}
        self._widgets: dict = {}

    @property
    def title(self) -> str:
        return CHECKLISTS[self.name][0]

    @property
    def items(self) -> dict[str, str]:
        return CHECKLISTS[self.name][1]

    def _require_item(self, item: str) -> None:
        if item not in self.items:
            raise ConfigurationError(
                f"Checklist {self.name!r} has no item {item!r}.",
                next_step=f"its items are {', '.join(self.items)}.",
            )

    def tick(self, item: str, done: bool = True, *, by: str = OPERATOR,
             evidence: str = "") -> None:
        """Mark an item done (or open again), remembering when and by whom."""
        self._require_item(item)
        self.done[item] = bool(done)
        if done:
            self.ticked_at[item] = datetime.now(UTC)
            self.ticked_by[item] = by
            self.evidence[item] = evidence
        else:
            for kept in (self.ticked_at, self.ticked_by, self.evidence):
                kept.pop(item, None)
        box = self._widgets.get(item)
        if box is not None and box.value != self.done[item]:
            box.value = self.done[item]  # its observer sees no change and keeps ``by``

    def tick_done_by_playbook(self, item: str, evidence: str) -> None:
        """Tick an item this run verifiably did, with the evidence (shown and recorded);
        an export verified or a verification passed is also a moment of the run's
        timeline (:mod:`playbook.journal`)."""
        self.tick(item, True, by=PLAYBOOK, evidence=evidence)
        if item in MOMENTS:
            journal.moment(MOMENTS[item], f"{self.items[item]}: {evidence}", passed=True,
                           item=item)

    def require_done(self) -> pd.DataFrame:
        """The table if every item is done; PreconditionFailed naming the open ones."""
        missing = [self.items[item] for item in self.open_items()]
        if missing:
            raise PreconditionFailed(
                f"{self.title}: not done yet: {'; '.join(missing)}. Nothing was verified or "
                "changed by this step.",
                next_step="do those steps, tick them (or answer them yes in "
                "checklist_answers), then run this cell again.")
        return self.table()

    # -- JupyterLab ---------------------------------------------------------------

    def widget(self):
        """A Checkbox per item, pre-filled; ticking one records the time."""
        import ipywidgets as widgets

        rows = [widgets.HTML(f"<b>{self.title}</b>")]
        for item, text in self.items.items():
            shown = text
            if self.ticked_by.get(item) == PLAYBOOK:
                shown += f" (done by the playbook: {self.evidence[item]})"
            box = widgets.Checkbox(value=self.done[item], description=shown, indent=False,
                                   layout=widgets.Layout(width="auto"))
            box.add_class(f"checklist-{item}")
            box.observe(lambda change, item=item: self._ticked_in_widget(item, change["new"]),
                        names="value")
            self._widgets[item] = box
            rows.append(box)
        return widgets.VBox(rows)

    def _ticked_in_widget(self, item: str, value: bool) -> None:
        if value != self.done[item]:
            self.tick(item, value)

    def show(self) -> None:
        """Display the checkboxes (in a notebook); returns None so they render once, and
        closes those of an earlier showing so stale ticks are not saved."""
        display_replacing(f"checklist:{self.name}", self.widget())

    # -- the record ---------------------------------------------------------------

    def rows(self) -> list[dict[str, object]]:
        for item, box in self._widgets.items():
            self._ticked_in_widget(item, box.value)  # a change the observer has not seen
        return [
            {
                "item": item,
                "text": text,
                "done": self.done[item],
                "by": self.ticked_by.get(item, "") if self.done[item] else "",
                "time": (self.ticked_at[item].strftime("%Y-%m-%d %H:%M:%S UTC")
                         if self.done[item] else ""),
                "evidence": self.evidence.get(item, "") if self.done[item] else "",
            }
            for item, text in self.items.items()
        ]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows(),
                            columns=["item", "text", "done", "by", "time", "evidence"])

    def open_items(self) -> list[str]:
        self.rows()
        return [item for item, done in self.done.items() if not done]

    def summary(self) -> str:
        opened = self.open_items()
        return (f"{self.title}: {len(self.items) - len(opened)}/{len(self.items)} done"
                + (f"; open: {', '.join(opened)}" if opened else ""))

    def record(self) -> pd.DataFrame:
        """Leave the checklist in the notebook's outputs (for the timeline) and return it
        as a table of item / done / by / time / evidence."""
        self.leave_in_record()
        return self.table()

    def leave_in_record(self) -> None:
        """Display the checklist as the ``application/json`` output the timeline reads."""
        from IPython.display import display

        payload = {"name": self.name, "title": self.title, "items": self.rows(),
                   "recorded_at": datetime.now(UTC).isoformat()}
        display({"application/json": {RECORD_KEY: payload}, "text/plain": self.summary()},
                raw=True)


def for_run(name: str, run, answers: Mapping[str, object] | None = None,
            **done_by_playbook: object) -> Checklist:
    """Checklist ``name`` with the items this run did ticked by the playbook. Each keyword
    is an item id and its value what shows the item was done: a check table or a result
    with checks (all must pass), a test restore, a backup, an export folder or manifest
    (its files are checked against it), the run itself (its record documents the results).
    What does not show success stays the operator's to tick. The lists of a change
    (``during_rollback``, ``recovery``) are only ticked when the run executed it."""
    checklist = Checklist(name, answers=answers)
    for item in done_by_playbook:
        checklist._require_item(item)
    if name in DONE_ONLY_WHEN_EXECUTING and not run.executing:
        return checklist
    for item, outcome in done_by_playbook.items():
        shown = performed(outcome)
        if shown.done:
            checklist.tick_done_by_playbook(item, shown.says)
    return checklist


def performed(outcome: object) -> Evidence:
    """Whether ``outcome`` (a result of a playbook step) shows its step done, and the
    evidence in a line. A result says so itself (:class:`evidence.ShowsEvidence`); a text
    is the evidence itself; a checks table passes when every check does; an export
    folder or manifest when its files match it. Anything else is refused: an item must
    never be left open because a result changed its shape."""
    if outcome is None:
        return NOT_DONE
    if isinstance(outcome, str):
        return Evidence(bool(outcome), outcome)
    if isinstance(outcome, ShowsEvidence):
        return outcome.evidence()
    if isinstance(outcome, pd.DataFrame):
        return checks_table_evidence(outcome)
    if isinstance(outcome, Path):
        return export_evidence(outcome)
    if isinstance(outcome, Manifest):
        return export_evidence(outcome.extra.get("folder"))
    raise ConfigurationError(
        f"A {type(outcome).__name__} cannot show that a checklist item was done. Nothing was "
        "changed.", next_step="report this as a bug in the playbook (the step's result "
        "needs an evidence() method).")


@dataclass
class ChecklistGroup:
    """Several checklists shown and recorded together (the closing lists of a notebook)."""

    checklists: list[Checklist]

    def show(self) -> None:
        import ipywidgets as widgets

        display_replacing("checklists:closing",
                          widgets.VBox([c.widget() for c in self.checklists]))

    def record(self) -> pd.DataFrame:
        """Record each checklist (one output each, for the timeline); one table of all."""
        for checklist in self.checklists:
            checklist.leave_in_record()
        return pd.concat([c.table().assign(checklist=c.name) for c in self.checklists],
                         ignore_index=True)[["checklist", "item", "text", "done", "by", "time",
                                             "evidence"]]


def closing_checklists(answers: Mapping[str, object] | None = None) -> ChecklistGroup:
    """The document's After Rollback list and its Post-Rollback Actions (immediately,
    within 24 hours, within a week): what is still to do once the change is made."""
    return ChecklistGroup([Checklist(name, answers=answers) for name in CLOSING])


def checklists_in(notebook) -> list[dict]:
    """Every checklist recorded in an executed notebook (an nbformat node or dict)."""
    return json_outputs(notebook, RECORD_KEY)
