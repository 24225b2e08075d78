"""Notebooks 20 and 21 roll back a migration of a real-looking Supabase project (not the
demo's) from its migrations folder, and bring it back, as automation runs them (papermill).

The suite's own catalog description and checksums judge the result, not the engine."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from catalog_description import describe_schema, differences
from corpus_projects import CORPUS, chat_rows, checksums, record_history
from notebook_runs import run_notebook, shipped_parameters
from playbook.db import localdb
from playbook.reversal.shadow import build_shadow, read_migrations_folder

ROLLBACK, RECOVER = "20_rollback_coaching_tables", "21_recover_coaching_tables"
TARGET = "20240320090000"  # replies and reactions: ALTER-style, new table, replaced function


def _all_yes(stem: str) -> dict:
    return {qid: "yes" for qid in shipped_parameters(stem)["answers"]}


@pytest.fixture
def chat_live(pg_cluster, monkeypatch, tmp_path):
    """A chat project's production database: every migration applied, a week of rows, the
    Supabase migration history; DATABASE_URL points at it, shadows go to the same server."""
    folder = read_migrations_folder(CORPUS / "chat")
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = localdb.create_database(pg_cluster.admin_url, name)
    with psycopg.connect(url) as conn:
        build_shadow(conn, folder.files)
        record_history(conn, folder)
        chat_rows(conn)
        conn.execute("""
            update public.messages set reply_to = id + 3 where id % 7 = 0 and id < 490;
            update public.profiles set avatar_url = 'https://img.test/' || id;
            insert into public.reactions (message_id, user_id, emoji)
            select id, author_id, 'tada' from public.messages where id % 3 = 0;
        """)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PLAYBOOK_TEST_SCRATCH", pg_cluster.admin_url)
    monkeypatch.setenv("PLAYBOOK_INCIDENTS", str(tmp_path / "incidents"))
    yield name, url, folder
    localdb.drop_database(pg_cluster.admin_url, name)


WATCHED = {
    "reactions": "select * from public.reactions",
    "messages": "select * from public.messages",
    "profiles": "select * from public.profiles",
}


@pytest.mark.both_versions
def test_a_project_migration_rolls_back_and_recovers_through_the_notebooks(
        pg_cluster, chat_live, tmp_path):
    name, url, folder = chat_live
    with psycopg.connect(url) as conn:
        before_rows = checksums(conn, WATCHED)
        schema_after = describe_schema(conn)
    before_name = f"t_{uuid.uuid4().hex[:12]}"
    before_url = localdb.create_database(pg_cluster.admin_url, before_name)
    with psycopg.connect(before_url) as conn:
        build_shadow(conn, folder.before(TARGET))
        schema_before = describe_schema(conn)
    localdb.drop_database(pg_cluster.admin_url, before_name)

    common = {"mode": "execute", "confirm_database": name, "incident_id": "INC-7",
              "migration": TARGET, "migrations_folder": str(folder.path),
              "scratch_url_env": "PLAYBOOK_TEST_SCRATCH"}
    dropped = run_notebook(ROLLBACK, tmp_path, {**common, "answers": _all_yes(ROLLBACK)})
    assert not dropped.failed, dropped.error
    text = dropped.outputs_text()
    assert "public.profiles.bio" in text  # what the migration dropped: only a backup has it
    assert 'drop table "public"."reactions"' in text
    with psycopg.connect(url) as conn:
        assert differences(describe_schema(conn), schema_before) == {}
        assert conn.execute("select count(*) from supabase_migrations.schema_migrations "
                            "where version = %s", (TARGET,)).fetchone()[0] == 0

    recovered = run_notebook(RECOVER, tmp_path, {**common, "answers": _all_yes(RECOVER)})
    assert not recovered.failed, recovered.error
    with psycopg.connect(url) as conn:
        assert differences(describe_schema(conn), schema_after) == {}
        assert checksums(conn, WATCHED) == before_rows
        assert conn.execute("select count(*) from supabase_migrations.schema_migrations "
                            "where version = %s", (TARGET,)).fetchone()[0] == 1


def test_review_with_the_shipped_answers_changes_nothing_and_stops_at_the_gate(
        pg_cluster, chat_live, tmp_path):
    """The default scratch server (the best local PostgreSQL) builds the shadows here."""
    name, url, folder = chat_live
    with psycopg.connect(url) as conn:
        schema = describe_schema(conn)
        rows = checksums(conn, WATCHED)
    parameters = {**shipped_parameters(ROLLBACK), "migration": TARGET,
                  "migrations_folder": str(folder.path)}
    review = run_notebook(ROLLBACK, tmp_path, parameters)
    assert review.failed and "GateClosed" in str(review.error)
    text = review.outputs_text()
    assert 'add column "bio" text' in text  # the plan was shown before the gate
    with psycopg.connect(url) as conn:
        assert differences(describe_schema(conn), schema) == {}
        assert checksums(conn, WATCHED) == rows


def test_an_older_migration_under_a_newer_one_stops_before_the_gate(pg_cluster, chat_live,
                                                                     tmp_path):
    name, url, folder = chat_live
    parameters = {**shipped_parameters(ROLLBACK), "migration": "20240215120000",
                  "migrations_folder": str(folder.path),
                  "scratch_url_env": "PLAYBOOK_TEST_SCRATCH"}
    refused = run_notebook(ROLLBACK, tmp_path, parameters)
    assert refused.failed and "DependentObjectsExist" in str(refused.error)
    assert "public.reactions" in str(refused.error)
