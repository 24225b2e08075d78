"""Triage rehearsed: every branch of the decision tree against the real demo database."""

from __future__ import annotations

import pytest

from notebook_runs import run_notebook, shipped_parameters
from playbook import demo_app
from playbook.changesets.migration import known_migrations
from playbook.errors import ConfigurationError
from playbook.procedures.triage import (
    FULL_RESTORE,
    RESTORE_TABLES,
    TriageQuestions,
    decide,
    look_at_database,
)

ROLLBACK_PATH = {"application_completely_broken": "yes", "data_corrupted": "no",
                 "multiple_migrations_failed": "no", "forward_fix_possible": "no"}


def evidence_of(db, incident: str | None = None):
    with db.connect() as conn:
        if incident:
            demo_app.break_application(conn, incident)
            conn.commit()
        return look_at_database(conn)


def test_the_playbook_knows_both_migrations_and_their_tables_from_their_sql():
    known = {m.name: m for m in known_migrations()}
    assert known["coaching_tables"].notebook == "20_rollback_coaching_tables"
    assert {str(t) for t in known["coaching_tables"].tables} == {
        "public.sponsor_connections", "public.sponsor_chat_messages",
        "public.sponsor_visible_memos"}
    assert known["sponsor_connections_sequence"].notebook == "10_rollback_sequence"


def test_a_healthy_demo_database_shows_every_coaching_table_and_a_healthy_sequence(demo_db):
    evidence = evidence_of(demo_db)
    coaching = evidence.state("coaching_tables")
    assert set(coaching.present) == {str(t) for t in coaching.migration.tables}
    assert all(rows > 0 for rows in coaching.present.values())
    assert evidence.state("sponsor_connections_sequence").fault == ""
    assert evidence.orphaned_profiles == 0


def test_a_blank_answer_stops_the_tree_and_recommends_nothing(demo_db):
    decision = decide({}, evidence_of(demo_db))
    assert decision.recommendation.notebook is None
    assert "application_completely_broken" in decision.recommendation.reason


def test_application_still_working_means_fix_forward_first(demo_db):
    decision = decide({"application_completely_broken": "no", "data_corrupted": "no"},
                      evidence_of(demo_db))
    assert decision.recommendation.action == "fix forward"
    assert decision.recommendation.notebook is None
    assert decision.recommendation.command() == ""


def test_corruption_in_some_tables_of_a_working_application_restores_just_those(demo_db):
    decision = decide({"application_completely_broken": "no", "data_corrupted": "yes"},
                      evidence_of(demo_db))
    assert decision.recommendation.notebook == RESTORE_TABLES


def test_broken_application_with_corrupted_data_is_the_nuclear_option(demo_db):
    decision = decide({"application_completely_broken": "yes", "data_corrupted": "yes"},
                      evidence_of(demo_db))
    assert decision.recommendation.notebook == FULL_RESTORE
    assert any(RESTORE_TABLES in note for note in decision.recommendation.notes), (
        "the surgical restore is offered before the nuclear option"
    )
    assert "after the backup" in decision.alternatives().set_index("alternative").loc[
        "Data Preservation", "here"]


def test_several_failed_migrations_also_lead_to_a_full_restore(demo_db):
    answers = {**ROLLBACK_PATH, "multiple_migrations_failed": "yes"}
    assert decide(answers, evidence_of(demo_db)).recommendation.notebook == FULL_RESTORE


def test_a_possible_forward_fix_beats_a_rollback_even_when_broken(demo_db):
    answers = {**ROLLBACK_PATH, "forward_fix_possible": "yes"}
    decision = decide(answers, evidence_of(demo_db), "coaching_tables")
    assert decision.recommendation.action == "fix forward"


@pytest.mark.parametrize("incident", ["sequence-behind", "sequence-default"])
def test_a_broken_sequence_shown_by_the_database_picks_the_sequence_rollback(demo_db, incident):
    evidence = evidence_of(demo_db, incident)
    assert evidence.state("sponsor_connections_sequence").fault
    decision = decide(ROLLBACK_PATH, evidence)
    assert decision.recommendation.notebook == "10_rollback_sequence"
    command = decision.recommendation.command("INC-7", "alice")
    assert command.startswith("playbook run 10_rollback_sequence --incident INC-7")
    assert "-p mode review" in command and "--operator alice" in command


def test_the_sequence_rollback_comes_before_the_destructive_one_the_operator_suspects(demo_db):
    evidence = evidence_of(demo_db, "sequence-behind")
    decision = decide(ROLLBACK_PATH, evidence, "coaching_tables")
    assert decision.recommendation.notebook == "10_rollback_sequence"
    assert any("coaching_tables" in note for note in decision.recommendation.notes)


def test_reported_coaching_failure_with_healthy_sequence_picks_the_coaching_rollback(demo_db):
    decision = decide(ROLLBACK_PATH, evidence_of(demo_db), "coaching_tables")
    rec = decision.recommendation
    assert rec.notebook == "20_rollback_coaching_tables"
    assert any(note.startswith("DESTRUCTIVE") for note in rec.notes)
    assert "exports" in decision.alternatives().set_index("alternative").loc[
        "Data Preservation", "here"]
    markdown = rec.markdown("INC-7")
    assert "[20_rollback_coaching_tables.ipynb](20_rollback_coaching_tables.ipynb)" in markdown
    assert "playbook run 20_rollback_coaching_tables --incident INC-7" in markdown


def test_no_report_and_no_fault_asks_which_migration_instead_of_guessing(demo_db):
    decision = decide(ROLLBACK_PATH, evidence_of(demo_db))
    assert decision.recommendation.notebook is None
    assert "suspected_migration" in decision.recommendation.reason


def test_already_rolled_back_coaching_tables_need_no_rollback(demo_db):
    with demo_db.connect() as conn:
        conn.execute("DROP TABLE public.sponsor_visible_memos, public.sponsor_chat_messages, "
                     "public.sponsor_connections CASCADE")
    evidence = evidence_of(demo_db)
    assert evidence.state("sponsor_connections_sequence").sequence is None
    decision = decide(ROLLBACK_PATH, evidence, "coaching_tables")
    assert decision.recommendation.action == "no rollback needed"
    assert decision.recommendation.notebook is None


@pytest.mark.parametrize("suspected", ["bogus", "coaching_tables; DROP TABLE x"])
def test_an_unknown_suspected_migration_is_refused(demo_db, suspected):
    with pytest.raises(ConfigurationError, match="suspected_migration"):
        decide(ROLLBACK_PATH, evidence_of(demo_db), suspected)


@pytest.mark.parametrize("answers", [{"application_broken": "yes"}, {"data_corrupted": "maybe"},
                                     ["yes"]])
def test_misspelt_or_malformed_answers_are_refused(demo_db, answers):
    with pytest.raises(ConfigurationError):
        TriageQuestions(answers, evidence_of(demo_db))


def test_shipped_triage_parameters_recommend_fix_forward_and_change_nothing(demo_db, tmp_path):
    before = demo_db.fingerprint()
    result = run_notebook("00_triage", tmp_path, shipped_parameters("00_triage"))
    assert not result.failed, result.error
    text = result.outputs_text()
    assert "Recommended: fix forward" in text
    assert "backup_exists_and_recent" in text  # the prerequisites checklist was recorded
    assert demo_db.fingerprint() == before


def test_triage_notebook_ends_with_the_command_for_a_broken_sequence(demo_db, tmp_path):
    with demo_db.connect() as conn:
        demo_app.break_application(conn, "sequence-behind")
        conn.commit()
    params = {**shipped_parameters("00_triage"), "answers": ROLLBACK_PATH,
              "incident_id": "INC-9"}
    result = run_notebook("00_triage", tmp_path, params)
    assert not result.failed, result.error
    assert "playbook run 10_rollback_sequence --incident INC-9" in result.outputs_text()
