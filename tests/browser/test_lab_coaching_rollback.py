"""Rollback Script 2 (coaching tables) in JupyterLab, in review mode, as the operator
meets it: the review tables, the STOP questions as widgets, a NO that stops the run
naming the question, all YES that lets the review go on to the export and the drop as it
would run, and the saved notebook recording every answer. Review mode changes nothing."""

from __future__ import annotations

import psycopg
from lab_driver import outputs_text, saved_widget_answers

STEM = "20_rollback_coaching_tables"
STOP = ("recent_backup", "backup_tested", "data_exported", "no_other_way", "team_notified",
        "maintenance_window", "scripts_reviewed", "understand_data_loss")
COACHING_TABLES = ("sponsor_connections", "sponsor_chat_messages", "sponsor_visible_memos")


def _coaching_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name = ANY(%s) "
            "ORDER BY table_name", (list(COACHING_TABLES),)).fetchall()
    return [r[0] for r in rows]


def test_coaching_rollback_stops_on_a_no_and_reviews_on_all_yes_in_the_browser(
        lab, lab_database):
    before = _coaching_tables(lab_database)
    assert len(before) == 3
    lab.open(lab.add_prepared_notebook(STEM, incident_id="INC-BROWSER-20",
                                       operator="browser test"))
    lab.run_all()

    # The review before the gate: the change set, what will be deleted, the drop plan.
    plan = lab.code_cell("steps.plan_drop(")
    assert lab.executed(plan)
    assert "DROP TABLE" in plan.locator(".jp-OutputArea").inner_text()
    assert lab.questions() == list(STOP)
    check = lab.code_cell("gate.check()")
    export = lab.code_cell("steps.export_data(")
    unanswered = "\n".join(lab.errors())
    assert "GateClosed" in unanswered and "recent_backup: unanswered" in unanswered
    assert lab.held_by_the_gate(export)
    lab.screenshot("stop-questions-rendered", focus=lab.code_cell("gate.show()"))

    for qid in STOP:
        lab.answer(qid, "NO" if qid == "team_notified" else "YES")
    lab.run_from(check)
    stopped = "\n".join(lab.errors())
    assert "team_notified: answered NO" in stopped
    assert "recent_backup" not in stopped
    assert lab.held_by_the_gate(export), "the run went past a NO"
    lab.screenshot("stopped-by-team-notified-no", focus=check)

    lab.answer("team_notified", "YES")
    lab.run_from(check)
    assert lab.errors() == []
    for table in COACHING_TABLES:
        assert table in export.locator(".jp-OutputArea").inner_text()
    perform = lab.code_cell("steps.perform_rollback(")
    assert "review mode: nothing was dropped" in perform.locator(".jp-OutputArea").inner_text()
    assert lab.executed(lab.code_cell("steps.verify_application("))
    lab.screenshot("review-after-all-yes", focus=perform)

    saved = lab.save()
    answers = {k: v for k, v in saved_widget_answers(saved).items() if k.startswith("gate-")}
    assert answers == {f"gate-{qid}": "YES" for qid in STOP}
    recorded = outputs_text(next(c for c in saved.cells if c.source.strip() == "gate.check()"))
    assert all(qid in recorded for qid in STOP)
    assert recorded.count("<td>YES</td>") == len(STOP) and "<td>NO</td>" not in recorded
    assert _coaching_tables(lab_database) == before, "review mode changed the database"
