"""Pointing the playbook at a server: the given one wins, and bad input is one sentence."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from helpers import run_cli
from playbook.db import connecting
from playbook.errors import ConfigurationError, ConnectionFailed, UnsafeConnection


def test_database_url_overrides_the_embedded_default(empty_db, project_env):
    env = dict(project_env, DATABASE_URL=empty_db.url)
    result = run_cli("demo", "load", "--rows", "50", env=env)
    assert result.returncode == 0, result.stderr
    assert empty_db.scalar("SELECT count(*) FROM public.sponsor_chat_messages") == 50
    assert not (Path(project_env["PLAYBOOK_HOME"]) / "clusters").exists(), (
        "nothing may be started when DATABASE_URL names a server"
    )


def test_libpq_variables_override_the_embedded_default(empty_db, project_env):
    params = psycopg.conninfo.conninfo_to_dict(empty_db.url)
    env = dict(project_env, PGHOST=params["host"], PGPORT=str(params["port"]),
               PGUSER=params["user"], PGPASSWORD=params["password"], PGDATABASE=empty_db.name)
    result = run_cli("demo", "load", "--rows", "30", env=env)
    assert result.returncode == 0, result.stderr
    assert empty_db.scalar("SELECT count(*) FROM public.sponsor_chat_messages") == 30
    assert not (Path(project_env["PLAYBOOK_HOME"]) / "clusters").exists()


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://u:s3cret-pw@127.0.0.1:1/db", "Could not connect"),
        ("postgresql://u:s3cret-pw@no-such-host.invalid:5432/db", "Could not connect"),
        ("postgresql://u:s3cret-pw@127.0.0.1:5432/db?sslmode=bogus-mode", "invalid sslmode"),
        ("host=127.0.0.1 port=notaport password=s3cret-pw", "Could not connect"),
        ("not a url at all s3cret-pw", "malformed"),
    ],
)
def test_bad_database_url_is_one_sentence_exit_2_and_never_shows_the_password(
    project_env, url, expected
):
    env = dict(project_env, DATABASE_URL=url, PLAYBOOK_CONNECT_TIMEOUT="3")
    result = run_cli("demo", "load", "--rows", "10", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_wrong_password_is_refused_without_echoing_it(empty_db):
    params = psycopg.conninfo.conninfo_to_dict(empty_db.url)
    wrong = empty_db.url.replace(params["password"], "Wr0ng-Secret")
    with pytest.raises(ConnectionFailed) as refused:
        connecting.connect(url=wrong)
    assert "Wr0ng-Secret" not in str(refused.value)
    assert "password authentication failed" in str(refused.value)


def test_summary_and_redact_never_show_a_password():
    url = "postgresql://app:p%40ss-word-123@db.example.com:5432/postgres"
    assert "p%40ss" not in connecting.summary(url)
    assert connecting.summary(url) == "host=db.example.com port=5432 user=app dbname=postgres"
    message = f"could not connect with {url} (password p@ss-word-123)"
    redacted = connecting.redact(message, url)
    assert "p@ss-word-123" not in redacted and "p%40ss-word-123" not in redacted


def test_review_sessions_refuse_writes(demo_db):
    with connecting.connect(purpose="test-review", read_only=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM public.virtues")
    assert demo_db.scalar("SELECT count(*) FROM public.virtues") > 0


def test_every_session_states_its_limits(demo_db):
    with connecting.connect(purpose="limits") as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('statement_timeout', 'lock_timeout', 'application_name')"
        ).fetchall())
    assert settings["application_name"] == "playbook:limits"
    assert settings["lock_timeout"] == "2000"
    assert settings["statement_timeout"] == "60000"


def test_a_transaction_pooler_is_refused_for_destructive_work():
    with pytest.raises(UnsafeConnection, match="transaction-mode pooler"):
        connecting.require_session_connection(
            "postgresql://postgres.ref:pw@aws-0-eu.pooler.supabase.com:6543/postgres"
        )
    connecting.require_session_connection("postgresql://u@db.ref.supabase.co:5432/postgres")


@pytest.mark.parametrize("name", ["", "1DATABASE", "DATABASE_URL; rm -rf /", "postgresql://x"])
def test_database_url_env_must_be_a_variable_name(name):
    with pytest.raises(ConfigurationError):
        connecting.database_url(name)
