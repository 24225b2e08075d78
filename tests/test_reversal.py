"""Rehearsed incidents: a migration from a real-looking Supabase project broke production;
reverse it from the project's migrations folder, prove the schema is back to the state before
it, then bring it back.

Each case builds *live* from the corpus (tests/corpus, written for this suite) exactly as
the project's deploys did, reverses the target migration, and compares live's catalog with
an independently built state-before database using the suite's own catalog description
(tests/catalog_description.py), not the engine under test.
"""

from __future__ import annotations

import pytest

from catalog_description import describe_schema, differences
from corpus_projects import CORPUS, chat_rows, checksums, record_history
from playbook.backups import take_backup
from playbook.db import localdb
from playbook.errors import (
    BackupUnusable,
    ConfigurationError,
    DependentObjectsExist,
    PreconditionFailed,
)
from playbook.reversal import plan as reversal
from playbook.reversal.data import data_at_stake
from playbook.reversal.reversible import load_reversible_migration
from playbook.reversal.rollback import recover_migration, roll_back_migration
from playbook.reversal.shadow import apply_sql, read_migrations_folder
from playbook.reversal.snapshot import take_snapshot

# (project, migration version): every pattern of the corpus is a target once.
CASES = [
    ("chat", "20240101000000"),  # trigger on auth.users, security definer, RLS, grants
    ("chat", "20240215120000"),  # enum in DO, identity, generated column, seed, publication, view
    ("chat", "20240320090000"),  # ALTER-style: add column + FK, drop column, replace function
    ("billing", "20240105080000"),  # create schema, partitions, uuid-ossp defaults, seed rows
    ("billing", "20240110093000"),  # publication dropped and re-created
    ("teams", "20240310000000"),  # newest of a chain
]


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


# --- the data: exported before the reversal, back after the recovery --------------------

@pytest.mark.both_versions
def test_replies_and_reactions_roll_back_and_come_back_row_for_row(pg_cluster, databases,
                                                                    tmp_path):
    folder = read_migrations_folder(CORPUS / "chat")
    target = folder.find("20240320090000")
    live = databases(folder.up_to(target.version))
    record_history(live, folder)
    chat_rows(live)
    live.execute("""
        update public.messages set reply_to = id + 7 where id % 5 = 0 and id < 490;
        update public.profiles set avatar_url = 'https://img.test/' || id where random() < 2;
        insert into public.reactions (message_id, user_id, emoji)
        select m.id, m.author_id, e from public.messages m, unnest(array['+1', 'eyes']) e
        where m.id % 4 = 0;
    """)
    live.commit()
    watched = {
        "reactions": "select message_id, user_id, emoji, created_at from public.reactions",
        "replies": "select id, reply_to from public.messages",
        "avatars": "select id, avatar_url, display_name from public.profiles",
        "messages": "select id, room_id, author_id, kind, body, body_chars, sent_at "
                    "from public.messages",
    }
    before = checksums(live, watched)
    schema_after = describe_schema(live)
    schema_before = describe_schema(databases(folder.before(target.version)))
    export_dir = tmp_path / "export"

    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        plan = reversal.plan_reversal(live, states, folder, target)
        stake = data_at_stake(states.before, states.after)
        live.rollback()
        assert [str(t) for t in stake.created_tables] == ["public.reactions"]
        assert {str(t): c for t, c in stake.added_columns.items()} == {
            "public.messages": ["reply_to"], "public.profiles": ["avatar_url"]}
        assert stake.dropped_by_migration == ["public.profiles.bio"]
        assert plan.history_versions == [target.version]
        result = roll_back_migration(live, plan, states, stake, export_dir)

    assert result.history_removed
    assert differences(describe_schema(live), schema_before) == {}
    assert live.execute("select count(*) from supabase_migrations.schema_migrations "
                        "where version = %s", (target.version,)).fetchone()[0] == 0
    exported_reactions = live.execute("select count(*) from public.messages "
                                      "where id % 4 = 0").fetchone()[0] * 2
    assert result.exported["public.reactions"] == exported_reactions
    # What the migration dropped comes back, empty: only a backup has it.
    assert live.execute("select count(*) from public.profiles where bio is not null"
                        ).fetchone()[0] == 0

    live.rollback()
    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        recovered = recover_migration(live, target, states, export_dir)
    assert recovered.history_restored
    assert differences(describe_schema(live), schema_after) == {}
    assert checksums(live, watched) == before
    assert live.execute("select count(*) from supabase_migrations.schema_migrations "
                        "where version = %s", (target.version,)).fetchone()[0] == 1


@pytest.mark.both_versions
def test_rooms_and_messages_come_back_with_generated_columns_and_without_the_seeds(
        pg_cluster, databases, tmp_path):
    folder = read_migrations_folder(CORPUS / "chat")
    target = folder.find("20240215120000")
    live = databases(folder.up_to(target.version))
    chat_rows(live)
    live.commit()
    watched = {"rooms": "select id, slug, title, created_at from public.rooms",
               "messages": "select * from public.messages"}
    before = checksums(live, watched)
    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        plan = reversal.plan_reversal(live, states, folder, target)
        stake = data_at_stake(states.before, states.after)
        live.rollback()
        roll_back_migration(live, plan, states, stake, tmp_path / "export")
    assert live.execute("select to_regclass('public.messages')").fetchone()[0] is None
    assert live.execute("select count(*) from pg_publication_rel").fetchone()[0] == 0
    live.rollback()
    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        recover_migration(live, target, states, tmp_path / "export")
    assert checksums(live, watched) == before
    # The seeded room the application deleted did not come back with the re-applied seeds.
    assert live.execute("select count(*) from public.rooms where slug = 'random'"
                        ).fetchone()[0] == 0
    # Identity continues after the highest id, so the next message does not collide.
    live.execute("insert into public.messages (room_id, author_id, body) "
                 "select min(id), '00000000-0000-0000-0000-000000000001', 'hello again' "
                 "from public.rooms")
    live.rollback()


@pytest.mark.both_versions
def test_partitioned_usage_events_are_exported_once_and_come_back(pg_cluster, databases,
                                                                   tmp_path):
    folder = read_migrations_folder(CORPUS / "billing")
    target = folder.find("20240105080000")
    live = databases(folder.up_to(target.version))
    live.execute("""
        insert into auth.users (id, email) values
          ('00000000-0000-0000-0000-000000000001', 'a@example.test');
        insert into billing.usage_events (user_id, quantity, recorded_at)
        select '00000000-0000-0000-0000-000000000001', g,
               timestamptz '2024-06-01' + g * interval '3 days'
        from generate_series(1, 300) g;
    """)
    live.commit()
    watched = {"usage": "select * from billing.usage_events",
               "per_partition": "select tableoid::regclass::text, count(*) "
                                "from billing.usage_events group by 1",
               "plans": "select * from billing.plans"}
    before = checksums(live, watched)
    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        plan = reversal.plan_reversal(live, states, folder, target)
        stake = data_at_stake(states.before, states.after)
        live.rollback()
        result = roll_back_migration(live, plan, states, stake, tmp_path / "export")
    assert result.exported["billing.usage_events"] == 300
    assert "billing.usage_events_2024" not in result.exported
    with reversal.shadow_states(pg_cluster.admin_url, folder, target) as states:
        recover_migration(live, target, states, tmp_path / "export")
    assert checksums(live, watched) == before


@pytest.mark.both_versions
def test_a_backup_taken_before_the_migration_gives_the_state_to_return_to(
        pg_cluster, databases, tmp_path, monkeypatch):
    folder = read_migrations_folder(CORPUS / "chat")
    target = folder.find("20240320090000")
    earlier = databases(folder.before(target.version))
    chat_rows(earlier)
    earlier.commit()
    backup = take_backup(localdb.database_url_for(pg_cluster.admin_url, earlier.info.dbname),
                         tmp_path / "backups")
    schema_before = describe_schema(earlier)
    live = databases(folder.up_to(target.version))
    monkeypatch.setenv("PLAYBOOK_TEST_SCRATCH", pg_cluster.admin_url)

    migration = load_reversible_migration(str(target.path), backup=str(backup.path),
                                          scratch_url_env="PLAYBOOK_TEST_SCRATCH")
    assert migration.folder is None
    with migration.states() as states:
        assert states.source.startswith(f"backup {backup.path.name}")
        plan = reversal.plan_reversal(live, states, None, migration.target)
        stake = data_at_stake(states.before, states.after)
        live.rollback()
        roll_back_migration(live, plan, states, stake, tmp_path / "export")
    assert differences(describe_schema(live), schema_before) == {}


def test_a_backup_that_already_holds_the_migration_is_refused(pg_cluster, databases,
                                                              tmp_path, monkeypatch):
    folder = read_migrations_folder(CORPUS / "teams")
    target = folder.find("20240310000000")
    later = databases(folder.up_to(target.version))
    backup = take_backup(localdb.database_url_for(pg_cluster.admin_url, later.info.dbname),
                         tmp_path / "backups")
    monkeypatch.setenv("PLAYBOOK_TEST_SCRATCH", pg_cluster.admin_url)
    migration = load_reversible_migration(str(target.path), backup=str(backup.path),
                                          scratch_url_env="PLAYBOOK_TEST_SCRATCH")
    with pytest.raises(BackupUnusable, match="taken after it"):
        with migration.states():
            pass


def test_the_application_is_verified_by_the_change_set_s_checks_never_the_demo_s(
        pg_cluster, databases):
    from playbook.changesets.migration import load_migration
    from playbook.procedures.health import change_set_checks

    folder = read_migrations_folder(CORPUS / "billing")
    live = databases(folder.files)
    reversible = load_reversible_migration(folder.files[-1].version,
                                           migrations_folder=str(folder.path))
    checks = change_set_checks(live, reversible)
    names = {c.name for c in checks}
    # Every table of the billing project, and nothing of the demo application's.
    assert {"billing.plans answers a read", "billing.usage_events answers a read"} <= names
    assert not any("virtues" in n or "journal" in n for n in names)
    assert all(c.passed for c in checks)
    # A table that does not answer fails its check (anon has no USAGE on schema billing).
    live.execute("SET ROLE anon")
    refused = {c.name: c.passed for c in change_set_checks(live, reversible)}
    live.rollback()
    assert refused["billing.plans answers a read"] is False
    assert refused["billing.customers answers a read"] is False

    coaching = load_migration("coaching_tables")
    assert [c.name for c in coaching.checks] == [
        "login data readable (users with profiles)", "virtues readable", "journal readable",
        "no orphaned profiles"]


@pytest.mark.both_versions
def test_a_snapshot_before_the_deploy_makes_the_rollback_lossless(pg_cluster, databases,
                                                                  tmp_path, monkeypatch):
    """The team ran `playbook snapshot` before deploying the migration that dropped
    profiles.bio; rolling it back from the snapshot brings bio back, value for value."""
    folder = read_migrations_folder(CORPUS / "chat")
    target = folder.find("20240320090000")
    live = databases(folder.before(target.version))
    chat_rows(live)
    live.execute("update public.profiles set bio = 'bio of ' || display_name")
    live.commit()
    bios = checksums(live, {"bio": "select id, bio from public.profiles"})
    url = localdb.database_url_for(pg_cluster.admin_url, live.info.dbname)
    snapshot, kept = take_snapshot(url, target, tmp_path / "snapshots")
    # The snapshot holds the rows of what the migration alters, and only those.
    assert {str(t) for t in kept} == {"public.messages", "public.profiles"}
    apply_sql(live, target.sql(), label=target.label)  # the deploy
    live.execute("delete from auth.users where email = 'user1@example.test'")  # cascades
    live.commit()

    monkeypatch.setenv("PLAYBOOK_TEST_SCRATCH", pg_cluster.admin_url)
    migration = load_reversible_migration(str(target.path), backup=str(snapshot.path),
                                          scratch_url_env="PLAYBOOK_TEST_SCRATCH",
                                          restore_dropped_data="yes")
    with migration.states() as states:
        plan = reversal.plan_reversal(live, states, None, migration.target)
        stake = data_at_stake(states.before, states.after)
        live.rollback()
        result = roll_back_migration(live, plan, states, stake, tmp_path / "export",
                                     put_back=migration.restore_dropped)
    assert result.dropped_put_back == {"public.profiles (bio)": 39}
    expected = live.execute("select md5(coalesce(string_agg(r::text, '|' order by r::text), '')) "
                            "from (select id, 'bio of ' || display_name as bio "
                            "from public.profiles) r").fetchone()[0]
    assert checksums(live, {"bio": "select id, bio from public.profiles"})["bio"] == expected
    assert bios["bio"] != expected  # the profile deleted since the deploy stays deleted


def test_putting_back_dropped_data_needs_a_backup():
    folder = read_migrations_folder(CORPUS / "chat")
    with pytest.raises(ConfigurationError, match="no backup was given"):
        load_reversible_migration("20240320090000", migrations_folder=str(folder.path),
                                  restore_dropped_data="yes")
    with pytest.raises(ConfigurationError, match="must be true or false"):
        load_reversible_migration("20240320090000", migrations_folder=str(folder.path),
                                  restore_dropped_data="maybe")


def test_a_file_of_a_supabase_migrations_folder_is_reversed_from_its_folder():
    from playbook.changesets.migration import load_migration

    folder = read_migrations_folder(CORPUS / "chat")
    target = folder.find("20240215120000")
    loaded = load_migration(str(target.path))
    assert loaded.folder is not None and loaded.folder.path == folder.path
    assert loaded.target.version == "20240215120000"
    # The coaching change set is still a change set.
    assert load_migration("coaching_tables").name == "coaching_tables"
