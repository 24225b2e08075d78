"""Triage in JupyterLab, as the on-call operator does it: open 00_triage, run it, answer
the decision tree in the widgets, re-run from the decision, read the recommendation, tick
a prerequisite, save. The saved notebook is the record of what was answered."""

from __future__ import annotations

from lab_driver import outputs_text, saved_widget_answers

STEM = "00_triage"
TREE = ("application_completely_broken", "data_corrupted", "multiple_migrations_failed",
        "forward_fix_possible")


def test_triage_decision_tree_answered_in_the_browser_recommends_and_is_recorded(lab):
    lab.open(lab.add_prepared_notebook(STEM, incident_id="INC-BROWSER-1",
                                       operator="browser test",
                                       suspected_migration="coaching_tables"))
    lab.run_all()

    assert lab.questions("triage-") == list(TREE)
    decide = lab.code_cell("steps.decide(")
    recommendation = lab.code_cell("steps.recommendation(")
    assert lab.errors() == []
    first = recommendation.locator(".jp-OutputArea").inner_text()
    assert "answer the triage questions" in first
    assert "application_completely_broken" in first and "unanswered" in first
    lab.screenshot("tree-unanswered", focus=lab.code_cell("questions.show()"))

    # The application still works: the tree stops at "fix forward", no rollback notebook.
    lab.answer("application_completely_broken", "NO", prefix="triage-")
    lab.answer("data_corrupted", "NO", prefix="triage-")
    lab.run_from(decide)
    assert lab.errors() == []
    fix_forward = recommendation.locator(".jp-OutputArea").inner_text()
    assert "Recommended: fix forward" in fix_forward
    assert "20_rollback_coaching_tables" not in fix_forward
    assert "still works" in decide.locator(".jp-OutputArea").inner_text()
    lab.screenshot("tree-no-means-fix-forward", focus=recommendation)

    # Completely broken, data intact, one migration, no forward fix: roll back that one.
    for qid, choice in zip(TREE, ("YES", "NO", "NO", "NO"), strict=True):
        lab.answer(qid, choice, prefix="triage-")
    lab.run_from(decide)
    assert lab.errors() == []
    rollback = recommendation.locator(".jp-OutputArea").inner_text()
    assert "roll back the specific migration" in rollback
    assert "20_rollback_coaching_tables" in rollback
    assert "--incident INC-BROWSER-1" in rollback
    lab.screenshot("tree-recommends-coaching-rollback", focus=recommendation)

    # The Prerequisites checklist is a record: tick what is true, then record it.
    lab.tick("checklist-team_notified_of_plan")
    lab.run_from(lab.code_cell("checklist.record()"))
    assert lab.errors() == []

    saved = lab.save()
    widgets = saved_widget_answers(saved)
    assert {qid: widgets[f"triage-{qid}"] for qid in TREE} == dict(
        zip(TREE, ("YES", "NO", "NO", "NO"), strict=True))
    assert widgets["checklist-team_notified_of_plan"] is True
    assert widgets["checklist-backup_exists_and_recent"] is False
    cells = {c.source.strip(): c for c in saved.cells if c.cell_type == "code"}
    path = outputs_text(next(c for s, c in cells.items() if "steps.decide(" in s))
    assert "Is the application completely broken?" in path and "YES" in path
    record = outputs_text(next(c for s, c in cells.items() if s == "checklist.record()"))
    assert "team_notified_of_plan" in record
    assert "roll back the specific migration" in outputs_text(
        next(c for s, c in cells.items() if "steps.recommendation(" in s))
