"""The STOP questions: any NO, blank or failed check closes the gate before any change."""

from __future__ import annotations

import pytest

from playbook.errors import ConfigurationError, GateClosed, WrongDatabase
from playbook.gates import Gate, confirm_target, reject_unknown_answers, require_mode
from playbook.steps import rollback_coaching_tables as steps20
from playbook.steps import rollback_sequence as steps10

QUESTIONS = {
    "recent_backup": "Do you have a recent database backup?",
    "team_notified": "Has the team been notified?",
}


def test_every_yes_opens_the_gate_and_the_answers_are_returned_for_the_record():
    table = Gate("stop", QUESTIONS, {"recent_backup": "yes", "team_notified": "YES"}).check()
    assert list(table["answer"]) == ["YES", "YES"]


@pytest.mark.parametrize(
    "answers, failing",
    [
        ({"recent_backup": "no", "team_notified": "yes"}, {"recent_backup": "answered NO"}),
        ({"recent_backup": "yes"}, {"team_notified": "unanswered"}),
        ({}, {"recent_backup": "unanswered", "team_notified": "unanswered"}),
        ({"recent_backup": "", "team_notified": "no"},
         {"recent_backup": "unanswered", "team_notified": "answered NO"}),
    ],
)
def test_a_no_or_a_blank_closes_the_gate_naming_each_question(answers, failing):
    with pytest.raises(GateClosed) as closed:
        Gate("stop", QUESTIONS, answers).check()
    assert closed.value.failing == failing
    for qid in failing:
        assert qid in str(closed.value)
    assert "Nothing was changed" in str(closed.value)


def test_yaml_bare_yes_and_no_arrive_as_booleans_and_count():
    assert Gate("stop", QUESTIONS, {"recent_backup": True, "team_notified": True}).check() \
        is not None
    with pytest.raises(GateClosed):
        Gate("stop", QUESTIONS, {"recent_backup": True, "team_notified": False}).check()


@pytest.mark.parametrize("bad", ["y", "yes please", "1", 1, ["yes"], "oui"])
def test_an_answer_that_is_not_yes_or_no_is_refused(bad):
    with pytest.raises(ConfigurationError, match="must be 'yes' or 'no'"):
        Gate("stop", QUESTIONS, {"recent_backup": bad, "team_notified": "yes"})


def test_a_failed_verification_closes_the_gate_whatever_was_answered():
    gate = Gate("stop", QUESTIONS, {"recent_backup": "yes", "team_notified": "yes"})
    gate.verify("recent_backup", False, "newest backup is older than 7 days")
    with pytest.raises(GateClosed, match="older than 7 days"):
        gate.check()
    assert gate.table().set_index("question").loc["recent_backup", "verified"] == "FAIL"


def test_widget_answers_override_the_parameters_as_the_operator_clicks():
    gate = Gate("stop", QUESTIONS, {"recent_backup": "yes", "team_notified": "yes"})
    gate.widget()
    gate._widgets["team_notified"].value = "no"  # the operator clicks NO
    with pytest.raises(GateClosed, match="team_notified"):
        gate.check()
    gate._widgets["team_notified"].value = "yes"
    assert len(gate.check()) == 2


def test_show_renders_once_and_returns_nothing():
    assert Gate("stop", QUESTIONS, {}).show() is None


def test_a_typo_in_an_answer_id_is_refused():
    gate = Gate("stop", QUESTIONS, {})
    with pytest.raises(ConfigurationError, match="recent_backups"):
        reject_unknown_answers({"recent_backups": "yes"}, gate)


@pytest.mark.parametrize("mode", ["", "EXECUTE", "dry-run", "execute; drop"])
def test_unknown_mode_is_refused(mode):
    with pytest.raises(ConfigurationError, match="mode must be"):
        require_mode(mode)


def test_execute_needs_the_connected_database_named():
    confirm_target("prod", "review", "")  # review needs no confirmation
    confirm_target("prod", "execute", "prod")
    for wrong in ("", "staging", "PROD", "prod "):
        with pytest.raises(WrongDatabase, match="connected to database 'prod'"):
            confirm_target("prod", "execute", wrong)


def test_showing_a_gate_again_closes_the_widgets_of_the_previous_showing():
    first = Gate("stop", QUESTIONS, {"recent_backup": "no"})
    first.show()
    old_toggle = first._widgets["recent_backup"]
    assert old_toggle.comm is not None
    Gate("stop", QUESTIONS, {"recent_backup": "yes"}).show()  # the cell is run again
    assert old_toggle.comm is None, "stale answers must not stay in the saved widget state"


# --- a closed gate stops the change itself, not only the cell order ------------------------


def test_a_step_that_changes_the_database_refuses_while_a_gate_of_its_run_is_closed(demo_db):
    """In JupyterLab, Run All can still start a cell queued behind a failed gate.check()
    (the kernel aborts only what it has already received). The change must refuse itself."""
    from playbook import demo_app
    from playbook.db.names import QualifiedName
    from playbook.procedures import sequences
    from playbook.runs import begin_run

    with demo_db.connect() as conn:
        demo_app.break_application(conn, "sequence-behind")
    before = demo_db.fingerprint()
    run = begin_run("10_rollback_sequence", mode="execute", confirm_database=demo_db.name)
    with run.connect() as conn:
        diagnosis = sequences.diagnose(conn, QualifiedName("public", "sponsor_connections"), "id")
    gate = steps10.gate(run, diagnosis, {"issue_confirmed": "yes", "team_notified": "no"})
    assert run.gates == [gate]
    with pytest.raises(GateClosed, match="team_notified"):
        steps10.run_rollback(run, diagnosis)  # gate.check() was skipped, as in the race
    assert demo_db.fingerprint() == before

    steps10.gate(run, diagnosis, {"issue_confirmed": "yes", "team_notified": "yes"})
    assert len(run.gates) == 1, "re-running the gate's cell replaces the earlier gate"
    outcome = steps10.run_rollback(run, diagnosis)
    assert demo_db.fingerprint() != before, outcome



def test_the_coaching_export_refuses_while_the_stop_gate_is_closed(demo_db, tmp_path):
    from playbook.changesets.migration import load_migration
    from playbook.runs import begin_run

    run = begin_run("20_rollback_coaching_tables", mode="execute", confirm_database=demo_db.name)
    change_set = load_migration("coaching_tables")
    steps20.gate(run, change_set, tmp_path / "exports")  # nothing answered
    with pytest.raises(GateClosed, match="recent_backup: unanswered"):
        steps20.export_data(run, change_set, tmp_path / "exports", show_progress=False)
    assert not (tmp_path / "exports").exists()
