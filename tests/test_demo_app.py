"""The demo application behind the procedure document, and the incidents it can simulate."""

from __future__ import annotations

import psycopg
import pytest

from helpers import run_cli
from playbook import demo_app
from playbook.db import localdb
from playbook.db.fingerprint import database_fingerprint

# The document's step 4 test insert, with real profile ids (the FKs refuse random ones).
TEST_INSERT = (
    "INSERT INTO public.sponsor_connections (id, practitioner_user_id, sponsor_user_id, status) "
    "VALUES (DEFAULT, md5('user-2')::uuid, md5('user-5')::uuid, 'active') RETURNING id"
)


def _insert_fails_with(database, error: type[Exception]) -> None:
    with database.connect() as conn, pytest.raises(error):
        conn.execute(TEST_INSERT)


@pytest.mark.both_versions
def test_demo_loads_every_table_the_document_names(empty_db, project_env):
    env = dict(project_env, DATABASE_URL=empty_db.url)
    result = run_cli("demo", "load", "--rows", "300", env=env)
    assert result.returncode == 0, result.stderr
    with empty_db.connect() as conn:
        counts = demo_app.application_counts(conn)
    assert counts["public.sponsor_chat_messages"] == 300
    assert counts["public.sponsor_connections"] == 30
    assert counts["public.sponsor_visible_memos"] == 60
    assert counts["public.journal_entries"] == 150
    assert counts["public.virtues"] == 12
    assert counts["auth.users"] == counts["public.profiles"] == 20
    for table, count in counts.items():
        assert f"{table}" in result.stdout and f"{count:,}" in result.stdout


def test_two_loads_of_the_same_size_are_identical(pg_cluster, empty_db):
    twin = f"{empty_db.name}_twin"
    twin_url = localdb.create_database(pg_cluster.admin_url, twin)
    try:
        fingerprints = []
        for url in (empty_db.url, twin_url):
            with psycopg.connect(url) as conn:
                demo_app.create_application(conn)
                demo_app.apply_coaching_migration(conn)
                demo_app.load_sample_data(conn, rows=120)
                fingerprints.append(database_fingerprint(conn))
        assert fingerprints[0] == fingerprints[1]
    finally:
        localdb.drop_database(pg_cluster.admin_url, twin)


@pytest.mark.both_versions
def test_sequence_behind_makes_inserts_fail_with_duplicate_key(demo_db, project_env):
    with demo_db.connect() as conn:
        conn.execute(TEST_INSERT)
        conn.rollback()  # healthy before
    result = run_cli("demo", "break", "sequence-behind", env=project_env)
    assert result.returncode == 0, result.stderr
    _insert_fails_with(demo_db, psycopg.errors.UniqueViolation)


@pytest.mark.both_versions
def test_sequence_default_makes_inserts_fail_with_null_id(demo_db, project_env):
    result = run_cli("demo", "break", "sequence-default", env=project_env)
    assert result.returncode == 0, result.stderr
    _insert_fails_with(demo_db, psycopg.errors.NotNullViolation)


def test_an_unknown_simulator_is_refused(demo_db, project_env):
    result = run_cli("demo", "break", "everything", env=project_env)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_fresh_is_refused_for_a_database_named_by_database_url(demo_db, project_env):
    before = demo_db.fingerprint()
    result = run_cli("demo", "load", "--fresh", env=project_env)
    assert result.returncode == 2
    assert "refusing to drop" in result.stdout + result.stderr
    assert demo_db.fingerprint() == before
