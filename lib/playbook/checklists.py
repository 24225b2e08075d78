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

``answers`` is the notebook's ``checklist_answers`` parameter: item ids mapped to
yes/no (or true/false), either flat (``{"backup_verified": "yes"}``, ids are unique
across all checklists) or per checklist (``{"before_rollback": {"backup_verified":
"yes"}}``). An id no checklist knows is a typo and refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from .errors import ConfigurationError
from .gates import YES, normalise_answer

RECORD_KEY = "playbook_checklist"

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
}


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
    if answers is None:
        answers = {}
    if not isinstance(answers, Mapping):
        raise ConfigurationError(
            f"checklist_answers must be a mapping of item id to yes/no, got "
            f"{type(answers).__name__}. Nothing was changed.",
            next_step="see the notebook's parameters file for the item ids.",
        )
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
    """One of the document's checklists, ticked in widgets or pre-filled by parameters."""

    name: str
    answers: Mapping[str, object] | None = None
    done: dict[str, bool] = field(init=False)
    ticked_at: dict[str, datetime] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        prefilled = answers_for(self.name, self.answers)
        now = datetime.now(UTC)
        self.done = {item: prefilled.get(item, False) for item in self.items}
        self.ticked_at = {item: now for item, done in self.done.items() if done}
        self._widgets: dict = {}

    @property
    def title(self) -> str:
        return CHECKLISTS[self.name][0]

    @property
    def items(self) -> dict[str, str]:
        return CHECKLISTS[self.name][1]

    def tick(self, item: str, done: bool = True) -> None:
        """Mark an item done (or open again), remembering when."""
        if item not in self.items:
            raise ConfigurationError(
                f"Checklist {self.name!r} has no item {item!r}.",
                next_step=f"its items are {', '.join(self.items)}.",
            )
        self.done[item] = bool(done)
        if done:
            self.ticked_at[item] = datetime.now(UTC)
        else:
            self.ticked_at.pop(item, None)

    # -- JupyterLab ---------------------------------------------------------------

    def widget(self):
        """A Checkbox per item, pre-filled; ticking one records the time."""
        import ipywidgets as widgets

        rows = [widgets.HTML(f"<b>{self.title}</b>")]
        for item, text in self.items.items():
            box = widgets.Checkbox(value=self.done[item], description=text, indent=False,
                                   layout=widgets.Layout(width="auto"))
            box.add_class(f"checklist-{item}")
            box.observe(lambda change, item=item: self.tick(item, change["new"]), names="value")
            self._widgets[item] = box
            rows.append(box)
        return widgets.VBox(rows)

    def show(self) -> None:
        """Display the checkboxes (in a notebook); returns None so they render once."""
        from IPython.display import display

        display(self.widget())

    # -- the record ---------------------------------------------------------------

    def rows(self) -> list[dict[str, object]]:
        for item, box in self._widgets.items():
            if box.value != self.done[item]:  # a change the observer has not seen
                self.tick(item, box.value)
        return [
            {
                "item": item,
                "text": text,
                "done": self.done[item],
                "time": (self.ticked_at[item].strftime("%Y-%m-%d %H:%M:%S UTC")
                         if self.done[item] else ""),
            }
            for item, text in self.items.items()
        ]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows(), columns=["item", "text", "done", "time"])

    def open_items(self) -> list[str]:
        return [item for item, done in self.done.items() if not done]

    def record(self) -> pd.DataFrame:
        """Leave the checklist in the notebook's outputs (for the timeline) and return it
        as a table of item / done / time."""
        from IPython.display import display

        payload = {"name": self.name, "title": self.title, "items": self.rows(),
                   "recorded_at": datetime.now(UTC).isoformat()}
        opened = self.open_items()
        summary = (f"{self.title}: {len(self.items) - len(opened)}/{len(self.items)} done"
                   + (f"; open: {', '.join(opened)}" if opened else ""))
        display({"application/json": {RECORD_KEY: payload}, "text/plain": summary}, raw=True)
        return self.table()


def checklists_in(notebook) -> list[dict]:
    """Every checklist recorded in an executed notebook (an nbformat node or dict)."""
    found = []
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get("application/json")
            if isinstance(data, Mapping) and RECORD_KEY in data:
                found.append(dict(data[RECORD_KEY]))
    return found
