"""The document's checklists as recorded checkboxes, rehearsed: what the playbook did
itself is ticked by it with the time and the evidence, what is left open reaches the
incident's timeline as a follow-up, a typo in an item id is refused, and the Supabase
dashboard steps must all be done before an executed restore is verified."""

from __future__ import annotations

from types import SimpleNamespace

import nbformat
import pytest

from playbook import demo_app
from playbook.checklists import (
    CHECKLISTS,
    CLOSING,
    PLAYBOOK,
    Checklist,
    checklists_in,
    closing_checklists,
    for_run,
)
from playbook.db.names import QualifiedName
from playbook.errors import ConfigurationError, PreconditionFailed
from playbook.exports import export_tables
from playbook.records import SUCCEEDED, run_notebook
from playbook.runs import begin_run
from playbook.steps import full_restore as steps30
from playbook.timeline import build_timeline
from playbook.verification import Check, checks_table


def _run(database, mode: str = "review"):
    return begin_run("10_rollback_sequence", mode=mode,
                     confirm_database=database.name if mode == "execute" else "")


def test_an_item_id_no_checklist_has_is_refused_wherever_it_is_given(demo_db):
    with pytest.raises(ConfigurationError, match="rollback_executd"):
        Checklist("during_rollback", answers={"rollback_executd": "yes"})
    with pytest.raises(ConfigurationError, match="no_such_step"):
        Checklist("during_rollback", answers={"during_rollback": {"no_such_step": "yes"}})
    with pytest.raises(ConfigurationError, match="verification_rn"):
        for_run("during_rollback", _run(demo_db), {}, verification_rn="done")
    with pytest.raises(ConfigurationError, match="login_tested"):
        Checklist("during_rollback").tick_done_by_playbook("login_tested", "elsewhere")
    with pytest.raises(ConfigurationError, match="no checklist 'after_rolback'"):
        Checklist("after_rolback")


def test_what_the_executed_rollback_did_is_ticked_by_the_playbook_with_time_and_evidence(
        demo_db):
    verified = checks_table([Check("sequence ahead of MAX(id)", True, 12, "> 11"),
                             Check("test insert", True, "ok", "ok")])
    during = for_run("during_rollback", _run(demo_db, "execute"),
                     {"application_stopped": "yes"}, rollback_executed="sequence moved to 12",
                     verification_run=verified, results_documented=_run(demo_db))
    table = during.table().set_index("item")
    assert table.loc["verification_run", "by"] == PLAYBOOK
    assert table.loc["verification_run", "evidence"] == "2/2 checks passed"
    assert table.loc["rollback_executed", "evidence"] == "sequence moved to 12"
    assert "is the record" in table.loc["results_documented", "evidence"]
    assert table.loc["application_stopped", "by"] == "operator"
    assert all(table.loc[item, "time"].endswith("UTC") for item in
               ("rollback_executed", "verification_run", "results_documented",
                "application_stopped"))
    assert during.open_items() == ["errors_logged"]


def test_a_failed_check_or_a_review_run_leaves_the_item_to_the_operator(demo_db):
    failed = checks_table([Check("sequence ahead of MAX(id)", False, 3, "> 11")])
    executed = for_run("during_rollback", _run(demo_db, "execute"), {},
                       verification_run=failed)
    assert "verification_run" in executed.open_items()
    review = for_run("during_rollback", _run(demo_db), {}, rollback_executed="would run",
                     results_documented=_run(demo_db))
    assert review.open_items() == list(CHECKLISTS["during_rollback"][1])


def test_an_export_counts_as_completed_only_while_its_files_match_the_manifest(
        demo_db, tmp_path):
    folder = tmp_path / "export"
    with demo_db.connect() as conn:
        export_tables(conn, [QualifiedName("public", "sponsor_connections")], folder,
                      purpose="rehearsal", show_progress=False)
    run = _run(demo_db)
    before = for_run("before_rollback", run, {}, data_export_completed=folder)
    assert before.table().set_index("item").loc["data_export_completed", "by"] == PLAYBOOK
    assert "matching its SHA-256" in before.evidence["data_export_completed"]

    csv = next(folder.glob("*.csv"))
    csv.write_bytes(csv.read_bytes() + b"tampered\n")
    assert "data_export_completed" in for_run("before_rollback", run, {},
                                              data_export_completed=folder).open_items()
    assert "data_export_completed" in for_run("before_rollback", run, {},
                                              data_export_completed=tmp_path / "none"
                                              ).open_items()


def test_an_executed_supabase_restore_waits_for_every_dashboard_step(demo_db):
    run = _run(demo_db, "execute")
    plan = SimpleNamespace(platform="supabase")
    steps = CHECKLISTS["supabase_dashboard_restore"][1]
    partly = steps30.dashboard_checklist(run, "supabase", {"dashboard_backups_opened": "yes"})
    with pytest.raises(PreconditionFailed) as refused:
        steps30.restore_from_backup(run, plan, partly)
    for step in list(steps)[1:]:
        assert steps[step] in str(refused.value)
    assert steps["dashboard_backups_opened"] not in str(refused.value)

    done = steps30.dashboard_checklist(run, "supabase", dict.fromkeys(steps, "yes"))
    assert steps30.restore_from_backup(run, plan, done).executed is False  # done in the dashboard
    assert done.require_done()["done"].all()


def test_the_closing_lists_are_the_after_rollback_and_post_rollback_actions():
    closing = closing_checklists({"users_notified": "yes", "post_rollback_week":
                                  {"post_mortem_held": "yes"}})
    assert [c.name for c in closing.checklists] == list(CLOSING)
    table = closing.record()
    done = table[table["done"]]
    assert sorted(done["item"]) == ["post_mortem_held", "users_notified"]
    assert len(table) == sum(len(CHECKLISTS[name][1]) for name in CLOSING)


def test_a_sequence_rollback_leaves_its_checklists_in_the_record_and_open_items_in_the_timeline(
        demo_db, tmp_path):
    with demo_db.connect() as conn:
        demo_app.break_application(conn, "sequence-behind")
    root = tmp_path / "incidents"
    record = run_notebook(
        "10_rollback_sequence", "INC-77",
        {"mode": "execute", "confirm_database": demo_db.name,
         "answers": {"issue_confirmed": "yes", "team_notified": "yes"},
         "checklist_answers": {"application_stopped": "yes", "team_notified": "yes"}},
        parameter_file="parameters/10_rollback_sequence.yaml", operator="alice", root=root)
    assert record.outcome == SUCCEEDED, record.why

    executed = nbformat.read(record.files["notebook"], as_version=4)
    recorded = {c["name"]: {i["item"]: i for i in c["items"]} for c in checklists_in(executed)}
    assert list(recorded) == ["before_rollback", "during_rollback", *CLOSING]
    for name, items in recorded.items():
        assert list(items) == list(CHECKLISTS[name][1])
    during = recorded["during_rollback"]
    for item in ("rollback_executed", "verification_run", "results_documented"):
        assert during[item]["done"] and during[item]["by"] == PLAYBOOK
        assert during[item]["time"].endswith("UTC") and during[item]["evidence"]
    assert during["application_stopped"]["by"] == "operator"
    assert recorded["before_rollback"]["team_notified"]["done"]

    timeline = build_timeline("INC-77", root)
    open_items = {f["item"] for f in timeline.follow_ups}
    assert {"errors_logged", "backup_verified", "users_notified",
            "post_mortem_held"} <= open_items
    assert not open_items & {"rollback_executed", "verification_run", "results_documented",
                             "application_stopped", "team_notified"}
    markdown = timeline.markdown_path.read_text()
    assert "Errors logged (`errors_logged`, 01-10_rollback_sequence)" in markdown
