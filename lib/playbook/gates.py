"""Gates: the procedure's STOP questions, asked before anything is changed.

In JupyterLab a gate shows each question as YES/NO toggle buttons, pre-filled from the
``answers`` parameter; the next cell calls :meth:`Gate.check`, which raises
:class:`GateClosed` naming every question answered NO or left blank. Headless, the same
``answers`` mapping is the only way to answer, so a shipped parameters file full of
``"no"`` can never open a gate by accident.

A prerequisite that can be verified (a backup exists, an export matches) is verified,
and the gate shows the evidence beside the operator's answer: a failed verification
closes the gate whatever was answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from . import journal, notify
from .errors import ConfigurationError, GateClosed, WrongDatabase

MODES = ("review", "execute")
YES, NO = "yes", "no"


def require_mode(mode: str) -> str:
    """``mode`` if it is "review" or "execute"; ConfigurationError otherwise."""
    if mode not in MODES:
        raise ConfigurationError(
            f"mode must be 'review' or 'execute', got {mode!r}. Nothing was changed.",
            next_step="run with mode='review' first to see what would happen.",
        )
    return mode


def confirm_target(current_database: str, mode: str, confirm_database: str) -> None:
    """In execute mode, ``confirm_database`` must name the database we are connected to:
    the operator's proof that they know which database this will change."""
    require_mode(mode)
    if mode != "execute":
        return
    if confirm_database != current_database:
        shown = repr(confirm_database) if confirm_database else "nothing"
        raise WrongDatabase(
            f"confirm_database is {shown} but this session is connected to database "
            f"{current_database!r}. Nothing was changed.",
            next_step=f"check DATABASE_URL points where you mean, then pass "
            f"confirm_database={current_database!r}.",
        )


def require_answer_mapping(answers: object, name: str = "answers",
                           what: str = "question id") -> Mapping:
    """``answers`` as a mapping ({} for None); ConfigurationError for anything else."""
    if answers is None:
        return {}
    if not isinstance(answers, Mapping):
        raise ConfigurationError(
            f"{name} must be a mapping of {what} to 'yes'/'no', got "
            f"{type(answers).__name__}. Nothing was changed.",
            next_step=f"see the notebook's parameters file for the {what}s.",
        )
    return answers


def normalise_answer(question_id: str, value: object) -> str | None:
    """'yes', 'no' or None (unanswered). YAML's bare yes/no arrive as booleans."""
    if value is None or value == "":
        return None
    if value is True:
        return YES
    if value is False:
        return NO
    if isinstance(value, str) and value.strip().lower() in (YES, NO):
        return value.strip().lower()
    raise ConfigurationError(
        f"The answer to {question_id!r} must be 'yes' or 'no', got {value!r}. Nothing was "
        "changed.",
        next_step="fix the value under `answers` in the parameters.",
    )


TEAM_NOTIFIED = "team_notified"
_SHOWN: dict[str, object] = {}

def require_open_gates(gates: list | None) -> None:
    """Raise GateClosed if any gate of this run is closed now (current widget answers and
    checks). Called by every step that changes the database, before it connects."""
    for gate in gates or []:
        failing = gate.failing()
        if failing:
            raise GateClosed(failing, gate=gate.name)


def display_replacing(key: str, box) -> None:
    """Display ``box`` and close the widgets shown earlier under ``key`` in this kernel.

    Re-running a cell makes new widgets; closing the old ones keeps their stale answers
    out of the notebook's saved widget state, so the record holds only what the operator
    answered last."""
    from IPython.display import display

    previous = _SHOWN.pop(key, None)
    if previous is not None:
        _close_tree(previous)
    _SHOWN[key] = box
    display(box)


def _close_tree(box) -> None:
    for child in getattr(box, "children", ()):
        _close_tree(child)
    box.close()


@dataclass
class Verification:
    """A prerequisite the playbook checked itself. A note (``decides=False``) is evidence
    shown beside the answer that does not close the gate (the team may have been told by
    phone when no notification went out)."""

    passed: bool
    evidence: str
    decides: bool = True


@dataclass
class Gate:
    """A set of YES/NO questions that must all be YES before the next step runs."""

    name: str
    questions: Mapping[str, str]
    answers: Mapping[str, object] = field(default_factory=dict)
    verifications: dict[str, Verification] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.answers = require_answer_mapping(self.answers)
        # A typo in a question id must not silently leave a question unanswered.
        self._given = {
            qid: normalise_answer(qid, value)
            for qid, value in self.answers.items()
            if qid in self.questions
        }
        self._widgets: dict = {}
        if TEAM_NOTIFIED in self.questions:
            _notification_evidence(self)

    def verify(self, question_id: str, passed: bool, evidence: str,
               *, decides: bool = True) -> None:
        """Attach a check's result to a question (the widget shows both)."""
        if question_id not in self.questions:
            raise KeyError(question_id)
        self.verifications[question_id] = Verification(bool(passed), evidence, decides)

    # -- JupyterLab ---------------------------------------------------------------

    def widget(self):
        """The questions as ToggleButtons pre-filled from ``answers``."""
        import ipywidgets as widgets

        rows = [widgets.HTML(f"<b>{self.name}</b>: every answer must be YES to continue.")]
        for qid, text in self.questions.items():
            toggle = widgets.ToggleButtons(
                options=[("YES", YES), ("NO", NO)],
                value=self._given.get(qid),
                description="",
                tooltips=[f"{qid}: yes", f"{qid}: no"],
            )
            toggle.add_class(f"gate-{qid}")
            self._widgets[qid] = toggle
            label = widgets.HTML(f"{text} <code>{qid}</code>")
            row = [label, toggle]
            if qid in self.verifications:
                check = self.verifications[qid]
                mark = ("&#x2705; verified" if check.passed else
                        "&#x274C; check failed" if check.decides else "&#x2139; note")
                row.append(widgets.HTML(f"{mark}: {check.evidence}"))
            rows.append(widgets.VBox(row))
        return widgets.VBox(rows)

    def show(self) -> None:
        """Display the gate's widgets (in a notebook). Returns None so that a cell ending
        in ``gate.show()`` renders the questions once, not twice."""
        display_replacing(f"gate:{self.name}", self.widget())

    # -- the decision -------------------------------------------------------------

    def current_answers(self) -> dict[str, str | None]:
        """Answers as they stand: the widgets' values when shown, else ``answers``."""
        if self._widgets:
            return {qid: self._widgets[qid].value for qid in self.questions}
        return {qid: self._given.get(qid) for qid in self.questions}

    def table(self) -> pd.DataFrame:
        answers = self.current_answers()
        rows = []
        for qid, text in self.questions.items():
            check = self.verifications.get(qid)
            rows.append({
                "question": qid,
                "asked": text,
                "answer": (answers[qid] or "(unanswered)").upper(),
                "verified": "" if check is None else ("pass" if check.passed else
                                                      "FAIL" if check.decides else "note"),
                "evidence": "" if check is None else check.evidence,
            })
        return pd.DataFrame(rows)

    def failing(self) -> dict[str, str]:
        failing: dict[str, str] = {}
        for qid, answer in self.current_answers().items():
            if answer is None:
                failing[qid] = "unanswered"
            elif answer != YES:
                failing[qid] = "answered NO"
            check = self.verifications.get(qid)
            if check is not None and check.decides and not check.passed:
                failing[qid] = f"check failed ({check.evidence})"
        return failing

    def check(self) -> pd.DataFrame:
        """Raise GateClosed unless every question is YES and every check passed; return the
        answers as a table for the record."""
        failing = self.failing()
        answered = "; ".join(f"{qid}: {why}" for qid, why in failing.items())
        journal.moment(journal.GATE, f"{self.name}: " + (f"CLOSED ({answered})" if failing
                                                         else "open, every answer YES"),
                       gate=self.name, open=not failing)
        if failing:
            run = journal.current_run()
            if run is not None:
                notify.notify_run(run, notify.GATE_STOPPED, f"{self.name} closed: {answered}")
            raise GateClosed(failing, gate=self.name)
        return self.table()


def unknown_answers(answers: Mapping[str, object], *gates: Gate) -> list[str]:
    """Answer ids that match no question of ``gates`` (typos in a parameters file)."""
    known = {qid for gate in gates for qid in gate.questions}
    return sorted(set(answers) - known)


def reject_unknown_answers(answers: Mapping[str, object], *gates: Gate) -> None:
    unknown = unknown_answers(answers, *gates)
    if unknown:
        known = sorted({qid for gate in gates for qid in gate.questions})
        raise ConfigurationError(
            f"answers names questions this notebook does not ask: {', '.join(unknown)}. "
            "Nothing was changed.",
            next_step=f"use the question ids {', '.join(known)}.",
        )


def _notification_evidence(gate: Gate) -> None:
    """The notification the playbook sent for this incident, beside "Has the team been
    notified?": evidence when one was delivered, a note (never closing the gate) when
    none was or it failed."""
    run = journal.current_run()
    delivered, evidence = notify.team_notified_evidence(getattr(run, "incident_id", ""))
    gate.verify(TEAM_NOTIFIED, delivered, evidence, decides=False)
