"""Rehearsed incidents: a migration from a real-looking Supabase project broke production;
reverse it from the project's migrations folder, prove the schema is back to the state before
it, then bring it back.

Each case builds *live* from the corpus (tests/corpus, written for this suite) exactly as
the project's deploys did, reverses the target migration, and compares live's catalog with
an independently built state-before database using the suite's own catalog description
(tests/catalog_description.py), not the engine under test.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from catalog_description import describe_schema, differences
from playbook import localdb
from playbook.errors import DependentObjectsExist, PreconditionFailed
from playbook.reversal import plan as reversal
from playbook.reversal.shadow import apply_sql, build_shadow, read_migrations_folder

CORPUS = Path(__file__).resolve().parent / "corpus"

# (project, migration version): every pattern of the corpus is a target once.
CASES = [
    ("chat", "20240101000000"),  # trigger on auth.users, security definer, RLS, grants
    ("chat", "20240215120000"),  # enum in DO, identity, generated column, seed, publication, view
    ("chat", "20240320090000"),  # ALTER-style: add column + FK, drop column, replace function
    ("billing", "20240105080000"),  # create schema, partitions, uuid-ossp defaults, seed rows
    ("billing", "20240110093000"),  # publication dropped and re-created
    ("teams", "20240310000000"),  # newest of a chain
]


def _database(cluster, migrations) -> tuple[str, psycopg.Connection]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = localdb.create_database(cluster.admin_url, name)
    conn = psycopg.connect(url)
    build_shadow(conn, migrations)
    return name, conn


@pytest.fixture
def databases(pg_cluster):
    made: list[tuple[str, psycopg.Connection]] = []

    def make(migrations) -> psycopg.Connection:
        made.append(_database(pg_cluster, migrations))
        return made[-1][1]

    yield make
    for name, conn in made:
        conn.close()
        localdb.drop_database(pg_cluster.admin_url, name)


@pytest.mark.both_versions
@pytest.mark.parametrize(("project", "version"), CASES)
def test_a_migration_is_reversed_to_the_state_before_it_and_recovered(
        pg_cluster, databases, project, version):
    folder = read_migrations_folder(CORPUS / project)
    target = folder.find(version)
    live = databases(folder.up_to(version))
    expected_before = describe_schema(databases(folder.before(version)))
    expected_after = describe_schema(live)
    assert differences(expected_after, expected_before), "the case must change the schema"

    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        plan = reversal.plan_reversal(live, states, folder, target)
        live.rollback()
        assert plan.drift == [] and plan.newer_applied == {}
        reversal.perform_reversal(live, plan, states)
        live.commit()

    assert differences(describe_schema(live), expected_before) == {}

    # Recovery: the migration re-applied on the reversed database gives the state after it.
    apply_sql(live, target.sql(), label=target.label)
    live.commit()
    assert differences(describe_schema(live), expected_after) == {}


@pytest.mark.parametrize(("project", "version"), [("chat", "20240320090000")])
def test_review_shows_the_old_definitions_of_what_the_migration_replaced(
        pg_cluster, databases, project, version):
    folder = read_migrations_folder(CORPUS / project)
    target = folder.find(version)
    live = databases(folder.up_to(version))
    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        plan = reversal.plan_reversal(live, states, folder, target)
    text = plan.sql()
    # The column it dropped comes back, the policy it dropped is re-created, the function
    # gets its old body (without avatar_url), the grant it revoked is given back.
    assert 'add column "bio" text' in text
    assert 'create policy "Profiles are readable by everyone"' in text
    assert "insert into public.profiles (id, display_name)\n" in text
    assert 'grant select on table "public"."profiles" to "anon"' in text
    assert 'drop column "reply_to"' in text


def test_reversing_an_older_migration_under_a_newer_one_is_refused(pg_cluster, databases):
    folder = read_migrations_folder(CORPUS / "teams")
    older = folder.find("20240301000000")
    live = databases(folder.files)
    before = describe_schema(live)
    with reversal.shadow_states(pg_cluster.admin_url, folder, older) as states:
        plan = reversal.plan_reversal(live, states, folder, older)
        live.rollback()
        assert "20240310000000_invitations.sql" in plan.newer_applied
        with pytest.raises(DependentObjectsExist, match="public.invitations"):
            reversal.perform_reversal(live, plan, states)
        live.rollback()
    assert differences(describe_schema(live), before) == {}


def test_a_change_made_by_hand_is_shown_as_drift_and_left_alone(pg_cluster, databases):
    folder = read_migrations_folder(CORPUS / "chat")
    target = folder.find("20240320090000")
    live = databases(folder.up_to(target.version))
    live.execute("CREATE INDEX hand_made_idx ON public.rooms (created_at)")
    live.commit()
    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        plan = reversal.plan_reversal(live, states, folder, target)
        live.rollback()
        assert any("hand_made_idx" in s for s in plan.drift)
        assert not any("hand_made_idx" in s for s in plan.statements)
        reversal.perform_reversal(live, plan, states)
        live.commit()
    assert live.execute("SELECT to_regclass('public.hand_made_idx')").fetchone()[0] is not None
    assert live.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'profiles' "
        "AND column_name = 'avatar_url'").fetchone()[0] == 0


def test_a_migration_that_changes_no_schema_is_refused_in_review(pg_cluster, databases,
                                                                  tmp_path):
    migrations = tmp_path / "supabase" / "migrations"
    migrations.mkdir(parents=True)
    (migrations / "20240101000000_t.sql").write_text("create table public.t (id int);")
    (migrations / "20240102000000_rows.sql").write_text("insert into public.t values (1);")
    folder = read_migrations_folder(tmp_path)
    target = folder.find("20240102000000")
    live = databases(folder.files)
    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        with pytest.raises(PreconditionFailed, match="no schema change to reverse"):
            reversal.plan_reversal(live, states, folder, target)
