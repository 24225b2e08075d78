"""Notebook 00, triage: should we roll back, and how?

What the database shows (each known migration's tables and rows, the sequence's health,
orphaned profiles), the document's decision tree answered beside that evidence, the
alternatives to consider first, the Prerequisites checklist and the recommended notebook.
Triage only reads. The tree and the evidence are :mod:`playbook.procedures.triage`.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..checklists import Checklist
from ..procedures.triage import Decision, Evidence, TriageQuestions, look_at_database
from ..runs import Run


def what_the_database_shows(run: Run) -> Evidence:
    """Read-only: which tables of each migration exist, their rows, the sequence's health,
    orphaned profiles."""
    return look_at_database(run)


def decision_tree(run: Run, evidence: Evidence,
                  answers: Mapping[str, object] | None = None) -> TriageQuestions:
    """The decision tree's questions as YES/NO widgets, pre-filled from ``answers`` (by
    default the run's), with what the database shows beside each."""
    return TriageQuestions(run.answers if answers is None else answers, evidence)


def decide(run: Run, questions: TriageQuestions, suspected_migration: str = "") -> Decision:
    """The path through the tree as answered now (re-run after changing a widget)."""
    return questions.decide(suspected_migration, incident_id=run.incident_id,
                            operator=run.operator)


def alternatives(run: Run, decision: Decision) -> pd.DataFrame:
    """The document's "consider these alternatives first", answered for this case."""
    return decision.alternatives()


def prerequisites(run: Run, checklist_answers: Mapping[str, object] | None = None
                  ) -> Checklist:
    """The document's Prerequisites, ticked by the operator (a record, never a gate)."""
    return Checklist("prerequisites", answers=checklist_answers)


def recommendation(run: Run, decision: Decision):
    """The recommended notebook, its link and the exact command (review mode first)."""
    return decision.show_recommendation()
