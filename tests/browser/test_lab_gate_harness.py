"""The gate as an operator meets it in JupyterLab, on a small notebook of its own: two
STOP questions, the check, and a table that only a passed gate reaches. It proves the
browser machinery (widgets render, clicks reach the kernel, saving keeps the answers)
independently of the playbook's notebooks."""

from __future__ import annotations

from pathlib import Path

import nbformat
from lab_driver import outputs_text, saved_widget_answers

QUESTIONS = {
    "backup_exists": "Do you have a recent database backup?",
    "team_notified": "Has the team been notified?",
}


def _write_gate_notebook(folder: Path, show: str = "gate.show();") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A gate with two questions"),
        nbformat.v4.new_code_cell("answers: dict = {}  # question id -> yes/no",
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "from playbook.gates import Gate\n"
            f"gate = Gate('harness', {QUESTIONS!r}, answers=answers)\n"
            f"{show}"),
        nbformat.v4.new_code_cell("gate.check()"),
        nbformat.v4.new_code_cell(
            "import pandas as pd\n"
            "from playbook.gates import require_open_gates\n"
            "require_open_gates([gate])  # a step stops itself while its gate is closed\n"
            "pd.DataFrame({'table': ['sponsor_connections'], 'rows_to_lose': [12]})"),
    ]
    path = folder / "gate_harness.ipynb"
    nbformat.write(nb, path)
    return path


def test_gate_answered_in_the_browser_stops_on_no_and_opens_on_yes(lab):
    lab.open(_write_gate_notebook(lab.folder))
    lab.run_all()

    assert lab.questions() == list(QUESTIONS)
    unanswered = "\n".join(lab.errors())
    assert "GateClosed" in unanswered
    assert "backup_exists: unanswered" in unanswered and "team_notified: unanswered" in unanswered
    check = lab.code_cell("gate.check()")
    review = lab.code_cell("pd.DataFrame")
    assert lab.held_by_the_gate(review), "the run went past a closed gate"
    lab.screenshot("gate-unanswered", focus=check)

    lab.answer("backup_exists", "YES")
    lab.answer("team_notified", "NO")
    lab.run_from(check)
    stopped = "\n".join(lab.errors())
    assert "team_notified: answered NO" in stopped
    assert "backup_exists" not in stopped
    assert lab.held_by_the_gate(review)
    assert lab.tables().count() == 0
    lab.screenshot("gate-closed-by-no", focus=check)

    lab.answer("team_notified", "YES")
    lab.run_from(check)
    assert lab.errors() == []
    assert lab.executed(review)
    assert "sponsor_connections" in lab.tables().last.inner_text()
    lab.screenshot("gate-open", focus=review)

    saved = lab.save()
    check_output = outputs_text(saved.cells[3])
    assert check_output.count("<td>YES</td>") == 2 and "<td>NO</td>" not in check_output
    assert saved_widget_answers(saved) == {f"gate-{qid}": "YES" for qid in QUESTIONS}


def test_a_cell_ending_in_gate_show_renders_each_question_once(lab):
    """As the notebooks write it: `gate.show()` last in its cell, no semicolon."""
    lab.open(_write_gate_notebook(lab.folder, show="gate.show()"))
    lab.run_all()
    assert lab.questions() == list(QUESTIONS)
    lab.screenshot("gate-rendered-once", focus=lab.code_cell("gate.show()"))
