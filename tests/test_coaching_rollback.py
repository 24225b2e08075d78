"""Rehearsed incidents for removing a migration's tables (procedures/drops.py,
changesets/dependencies.py and objects.py), against the real PostgreSQL the fixtures start."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from playbook.changesets.dependencies import find_dependents
from playbook.changesets.migration import load_migration
from playbook.changesets.objects import find_in_database, parse_created_objects
from playbook.db.locks import take_playbook_lock
from playbook.errors import (
    ConfigurationError,
    ConnectionFailed,
    DependentObjectsExist,
    ExportMismatch,
    LockBusy,
    ObjectNotFound,
    VerificationFailed,
)
from playbook.procedures import drops
from playbook.procedures.protected_tables import protected_state, protected_tables_untouched
from playbook.runs import begin_run
from playbook.steps import rollback_coaching_tables as steps20

COACHING = ("public.sponsor_connections", "public.sponsor_chat_messages",
            "public.sponsor_visible_memos")


@pytest.fixture
def coaching():
    return load_migration("coaching_tables")


@pytest.fixture
def exported(demo_db, coaching, tmp_path) -> Path:
    run = begin_run("20_rollback_coaching_tables")
    folder = tmp_path / "export"
    steps20.export_data(run, coaching, folder, show_progress=False)
    return folder


def _tables_present(db) -> set[str]:
    with db.connect() as conn:
        return {r[0] for r in conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_tables "
            "WHERE tablename LIKE 'sponsor_%'")}


def test_migration_objects_are_read_from_the_sql_with_function_signatures(coaching):
    objects = {(o.kind, o.display) for o in parse_created_objects(coaching.deploy_sql())}
    assert ("table", "public.sponsor_chat_messages") in objects
    assert ("function", "public.is_sponsor_of(uuid)") in objects
    assert ("function", "public.get_sponsor_chat_unread_count(bigint)") in objects
    assert ("sequence", "public.sponsor_connections_id_seq") in objects
    assert ("trigger", "sponsor_connections_set_updated_at on public.sponsor_connections") \
        in objects
    assert sum(kind == "policy" for kind, _ in objects) == 8


def test_serial_sequences_are_found_from_the_catalog_with_row_counts(demo_db, coaching):
    with demo_db.connect() as conn:
        inventory = find_in_database(conn, coaching)
    sequences = {f.obj.display: f.owned_by for f in inventory.of_kind("sequence")}
    assert sequences["public.sponsor_chat_messages_id_seq"] == \
        "owned by public.sponsor_chat_messages.id"
    assert inventory.rows_at_stake()["public.sponsor_chat_messages"] == 200


def test_a_table_already_gone_is_reported_as_rollback_not_needed(demo_db, coaching):
    with demo_db.connect() as conn:
        conn.execute("DROP TABLE public.sponsor_chat_messages")
        conn.commit()
        inventory = find_in_database(conn, coaching)
    table = inventory.table().set_index("object")
    assert table.loc["public.sponsor_chat_messages", "note"] == "absent: rollback not needed"
    assert table.loc["public.sponsor_connections", "exists"] == "yes"


def test_unknown_migration_name_and_injection_are_refused():
    with pytest.raises(ObjectNotFound):
        load_migration("coaching_tables; DROP TABLE profiles")
    with pytest.raises(ObjectNotFound):
        load_migration("..")


@pytest.mark.parametrize("kind, ddl, label", [
    ("view", "CREATE VIEW public.coach_summary AS SELECT id FROM public.sponsor_connections",
     "view public.coach_summary"),
    ("foreign key", "CREATE TABLE public.invoices (id int, connection_id bigint "
     "REFERENCES public.sponsor_connections (id))",
     "table constraint invoices_connection_id_fkey on public.invoices"),
    ("trigger", "CREATE TRIGGER profiles_touch BEFORE UPDATE ON public.profiles FOR EACH ROW "
     "EXECUTE FUNCTION public.set_sponsor_updated_at()", "trigger profiles_touch on "
     "public.profiles"),
    ("publication", "CREATE PUBLICATION coaching_feed FOR TABLE public.sponsor_chat_messages",
     "publication relation public.sponsor_chat_messages in publication coaching_feed"),
])
def test_drop_is_refused_when_an_outside_object_depends_on_a_table(
        demo_db, coaching, exported, kind, ddl, label):
    with demo_db.connect() as conn:
        conn.execute(ddl)
        conn.commit()
    before = demo_db.fingerprint()
    with pytest.raises(DependentObjectsExist, match=label.split(" on ")[0]):
        with demo_db.connect() as conn:
            drops.perform_drop(conn, coaching, exported)
    assert demo_db.fingerprint() == before
    assert len(_tables_present(demo_db)) == 3


def test_a_named_dependent_goes_with_the_rollback_and_nothing_else(demo_db, coaching, exported):
    with demo_db.connect() as conn:
        conn.execute("CREATE VIEW public.coach_summary AS "
                     "SELECT id FROM public.sponsor_connections")
        conn.execute("CREATE VIEW public.coach_summary2 AS SELECT id FROM public.coach_summary")
        conn.commit()
        dependents = [d.label for d in find_dependents(conn, find_in_database(conn, coaching))]
    assert dependents == ["view public.coach_summary", "view public.coach_summary2"]
    with pytest.raises(DependentObjectsExist, match="coach_summary2"):
        with demo_db.connect() as conn:
            drops.perform_drop(conn, coaching, exported, ["view public.coach_summary"])
    with demo_db.connect() as conn:
        result = drops.perform_drop(conn, coaching, exported, dependents)
    assert result.committed and not _tables_present(demo_db)
    assert demo_db.scalar("SELECT to_regclass('public.coach_summary') IS NULL")


def test_drop_removes_every_object_and_keeps_protected_tables(demo_db, coaching, exported):
    before = demo_db.fingerprint()
    files = {p.name: p.read_bytes() for p in exported.iterdir()}
    with demo_db.connect() as conn:
        result = drops.perform_drop(conn, coaching, exported)
    assert result.committed
    assert all(c.passed for c in result.checks)
    # Nothing was written since step 1: its export stays as it was, nothing beside it.
    assert any(c.observed.startswith("identical") for c in result.checks)
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == files
    assert [p.name for p in exported.parent.iterdir()] == [exported.name]
    after = demo_db.fingerprint()
    for table in ("auth.users", "public.profiles", "public.virtues", "public.journal_entries"):
        assert after[f"table {table}"] == before[f"table {table}"]
    assert not any("sponsor" in key for key in after)
    assert demo_db.scalar("SELECT count(*) FROM pg_proc WHERE proname LIKE '%%sponsor%%'") == 0


def test_rows_written_after_the_export_are_in_the_final_export_the_drop_leaves(
        demo_db, coaching, exported):
    import csv
    import hashlib

    from playbook.procedures import recovery

    with demo_db.connect() as conn:
        conn.execute("DELETE FROM public.sponsor_chat_messages WHERE id = 1")
        conn.commit()
    with demo_db.connect() as conn:
        result = drops.perform_drop(conn, coaching, exported)
    assert result.committed and _tables_present(demo_db) == set()
    # The export folder now holds the final export, taken under the write lock.
    manifest = json.loads((exported / "manifest.json").read_text())
    files = {f["table"]: f for f in manifest["files"]}
    messages = files["public.sponsor_chat_messages"]
    path = exported / messages["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == messages["sha256"]
    with open(path, newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    assert len(ids) == messages["rows"] == 199 and "1" not in ids
    # Step 1's export (with id 1) is kept beside it, marked, and refused by recovery.
    superseded = Path(manifest["extra"]["superseded"]["folder"])
    assert superseded.parent == exported.parent and (superseded / "SUPERSEDED").exists()
    with pytest.raises(ExportMismatch, match="superseded"):
        recovery.require_complete_export(coaching, superseded)
    recovery.require_complete_export(coaching, exported)


def test_drop_is_refused_when_an_export_file_was_altered(demo_db, coaching, exported):
    path = exported / "public.sponsor_visible_memos.csv"
    path.write_bytes(path.read_bytes().replace(b"Shared memo 1.", b"Shared memo X."))
    before = demo_db.fingerprint()
    with pytest.raises(ExportMismatch, match="SHA-256"):
        with demo_db.connect() as conn:
            drops.perform_drop(conn, coaching, exported)
    assert demo_db.fingerprint() == before


def test_second_operator_is_refused_while_the_first_holds_the_lock(demo_db, coaching, exported):
    before = demo_db.fingerprint()
    with demo_db.connect(application_name="operator-one") as first:
        take_playbook_lock(first, drops.lock_scope(coaching))
        with pytest.raises(LockBusy, match="operator-one"):
            with demo_db.connect() as second:
                drops.perform_drop(second, coaching, exported)
        first.rollback()
    assert demo_db.fingerprint() == before


def test_a_lock_held_by_another_session_mid_way_leaves_everything_as_it_was(
        demo_db, coaching, exported):
    before = demo_db.fingerprint()
    with demo_db.connect() as reader:
        # An application transaction still reading the chat: the DROP cannot get its lock.
        reader.execute("SELECT count(*) FROM public.sponsor_chat_messages")
        started = time.perf_counter()
        with pytest.raises(LockBusy, match="lock_timeout"):
            with demo_db.connect() as conn:
                drops.perform_drop(conn, coaching, exported, lock_timeout="300ms")
        assert time.perf_counter() - started < 5
        reader.rollback()
    assert demo_db.fingerprint() == before


def test_a_killed_connection_mid_way_leaves_everything_as_it_was(demo_db, coaching, exported):
    before = demo_db.fingerprint()
    with demo_db.connect(autocommit=True) as admin, demo_db.connect() as reader:
        reader.execute("SELECT count(*) FROM public.sponsor_visible_memos")
        conn = demo_db.connect(application_name="playbook-drop-under-test")

        def kill_when_waiting() -> None:
            for _ in range(200):
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'playbook-drop-under-test' "
                    "AND wait_event_type = 'Lock'").fetchall()
                if killed:
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_waiting)
        killer.start()
        with pytest.raises(ConnectionFailed, match="nothing it did was kept"):
            drops.perform_drop(conn, coaching, exported, lock_timeout="20s")
        killer.join()
        conn.close()
        reader.rollback()
    assert demo_db.fingerprint() == before


@pytest.mark.parametrize("hostile", ["view public.x; DROP TABLE public.profiles --",
                                     "fo'o", 'ba"r'])
def test_an_injection_string_as_a_dependent_name_changes_nothing(demo_db, coaching, exported,
                                                                 hostile):
    before = demo_db.fingerprint()
    with pytest.raises(ConfigurationError, match="do not depend on the migration"):
        with demo_db.connect() as conn:
            drops.perform_drop(conn, coaching, exported, [hostile])
    assert demo_db.fingerprint() == before


def test_review_plan_shows_the_statements_execute_runs_children_first(demo_db, coaching):
    run = begin_run("20_rollback_coaching_tables")
    plan = steps20.plan_drop(run, coaching)
    text = plan.sql_text()
    assert "CASCADE" not in text
    assert text.index('"sponsor_chat_messages"') < text.index('DROP TABLE "public".'
                                                               '"sponsor_connections"')
    assert 'DROP FUNCTION "public"."is_sponsor_of"(uuid);' in text
    # Before any drop: writes blocked, then the final export, as execute mode runs them.
    lock = text.splitlines()[0]
    assert lock.startswith("LOCK TABLE ") and lock.endswith(" IN EXCLUSIVE MODE;")
    assert all(f'"public"."{t.split(".")[1]}"' in lock for t in COACHING)
    final = 'COPY (SELECT * FROM "public"."sponsor_chat_messages") TO STDOUT WITH (FORMAT csv'
    assert text.index(final) < text.index("DROP ")


def test_rollback_of_an_already_rolled_back_migration_is_not_an_error(demo_db, coaching,
                                                                      exported):
    with demo_db.connect() as conn:
        assert drops.perform_drop(conn, coaching, exported).committed
    with demo_db.connect() as conn:
        again = drops.perform_drop(conn, coaching, exported, require_export=False)
    assert not again.committed and "rollback not needed" in again.note


def test_pg_dump_archive_is_written_without_the_password_in_argv(demo_db, coaching, exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    archive = exported / manifest["extra"]["archive"]["file"]
    assert archive.read_bytes()[:5] == b"PGDMP"
    assert "password" not in json.dumps(manifest).lower()


# --- the protected tables, proven in catalog look-ups after the DROP --------------------

# Done by an event trigger inside the drop's own transaction, after each DROP: a change to a
# protected table the rollback must not commit.
MEDDLING = {
    "update": "UPDATE public.profiles SET full_name = 'changed by the drop' "
              "WHERE id = (SELECT id FROM public.profiles ORDER BY id LIMIT 1)",
    "delete": "DELETE FROM public.journal_entries WHERE id = (SELECT min(id) FROM "
              "public.journal_entries)",
    # An explicit id: sequences are not transactional, the fingerprint would see nextval.
    "insert": "INSERT INTO public.virtues (id, name) VALUES (1000, 'Meddling') "
              "ON CONFLICT DO NOTHING",
    "truncate": "TRUNCATE public.journal_entries",
    "alter": "ALTER TABLE public.virtues ADD COLUMN IF NOT EXISTS meddled int",
}


def _meddle_during_drops(db, statement: str) -> None:
    with db.connect() as conn:
        conn.execute(f"CREATE FUNCTION public.meddle() RETURNS event_trigger LANGUAGE plpgsql "
                     f"AS $$ BEGIN {statement}; END $$")
        conn.execute("CREATE EVENT TRIGGER meddle ON sql_drop EXECUTE FUNCTION public.meddle()")
        conn.commit()


@pytest.mark.parametrize("change", sorted(MEDDLING))
def test_a_change_to_a_protected_table_inside_the_drop_rolls_everything_back(
        demo_db, coaching, exported, change):
    _meddle_during_drops(demo_db, MEDDLING[change])
    before = demo_db.fingerprint()
    with pytest.raises(VerificationFailed, match="rolled back; nothing was dropped"):
        with demo_db.connect() as conn:
            drops.perform_drop(conn, coaching, exported)
    assert demo_db.fingerprint() == before
    assert len(_tables_present(demo_db)) == 3


@pytest.mark.both_versions
def test_a_row_updated_by_the_drop_transaction_is_caught_on_both_server_versions(
        pg_cluster, demo_db, coaching, exported):
    _meddle_during_drops(demo_db, MEDDLING["update"])
    with pytest.raises(VerificationFailed,
                       match=r"public.profiles .*0 inserted, [1-9][0-9]* updated"):
        with demo_db.connect() as conn:
            drops.perform_drop(conn, coaching, exported)
    assert len(_tables_present(demo_db)) == 3


def test_application_writes_committed_during_the_drop_do_not_fail_its_proof(demo_db, coaching):
    with demo_db.connect() as conn, demo_db.connect(autocommit=True) as application:
        before = protected_state(conn, coaching)
        # A user logs in and writes in their journal while the rollback runs.
        application.execute("UPDATE auth.users SET last_sign_in_at = now() "
                            "WHERE id = (SELECT id FROM auth.users ORDER BY id LIMIT 1)")
        application.execute("INSERT INTO public.journal_entries (user_id, title) "
                            "SELECT id, 'written during the rollback' FROM public.profiles LIMIT 1")
        checks = protected_tables_untouched(conn, before)
        assert checks and all(c.passed for c in checks), checks
        # The same writes made by the rollback's own transaction are caught.
        conn.execute("INSERT INTO public.journal_entries (user_id, title) "
                     "SELECT id, 'written by the rollback' FROM public.profiles LIMIT 1")
        failed = [c for c in protected_tables_untouched(conn, before) if not c.passed]
        assert [c.observed for c in failed] == ["1 inserted, 0 updated, 0 deleted"]
        conn.rollback()


def test_a_change_undone_by_a_savepoint_still_counts_as_a_change(demo_db, coaching):
    class Undo(Exception):
        pass

    with demo_db.connect() as conn:
        before = protected_state(conn, coaching)
        with pytest.raises(Undo):
            with conn.transaction():
                conn.execute("INSERT INTO public.virtues (id, name) VALUES (1000, 'Undone')")
                raise Undo
        failed = [(c.name.split(" ")[0], c.observed)
                  for c in protected_tables_untouched(conn, before) if not c.passed]
        conn.rollback()
    # Erring on the side of refusing: the proof counts what the transaction did, not only
    # what it kept.
    assert failed == [("public.virtues", "1 inserted, 0 updated, 0 deleted")]


def test_with_track_counts_off_the_rows_are_compared_in_full(demo_db, coaching, exported):
    with demo_db.connect() as conn:
        conn.execute("SET track_counts = off")
        conn.commit()
        result = drops.perform_drop(conn, coaching, exported)
    assert result.committed and not _tables_present(demo_db)
    assert any("compared row by row" in c.name and c.passed for c in result.checks)
    with demo_db.connect() as conn:
        conn.execute("SET track_counts = off")
        before = protected_state(conn, coaching, with_checksums=True)
        conn.execute("UPDATE public.profiles SET full_name = 'x' "
                     "WHERE id = (SELECT id FROM public.profiles ORDER BY id LIMIT 1)")
        failed = [c.name for c in protected_tables_untouched(conn, before) if not c.passed]
        conn.rollback()
    assert failed == ["public.profiles rows and checksum unchanged (track_counts is off: "
                      "compared row by row)"]


def test_a_named_foreign_key_of_a_protected_table_goes_and_the_proof_expects_it(
        demo_db, coaching, tmp_path):
    with demo_db.connect() as conn:
        conn.execute("ALTER TABLE public.virtues ADD COLUMN coach_connection bigint "
                     "REFERENCES public.sponsor_connections (id)")
        conn.commit()
    run = begin_run("20_rollback_coaching_tables")
    folder = tmp_path / "export"
    steps20.export_data(run, coaching, folder, show_progress=False, archive=False)
    label = "table constraint virtues_coach_connection_fkey on public.virtues"
    with pytest.raises(DependentObjectsExist, match="virtues_coach_connection_fkey"):
        with demo_db.connect() as conn:
            drops.perform_drop(conn, coaching, folder)
    with demo_db.connect() as conn:
        result = drops.perform_drop(conn, coaching, folder, [label])
    assert result.committed and all(c.passed for c in result.checks)
    assert demo_db.scalar("SELECT count(*) FROM pg_constraint "
                          "WHERE conname = 'virtues_coach_connection_fkey'") == 0


# --- the export on several sessions sharing one snapshot --------------------------------

def _coaching_tables():
    from playbook.db.names import QualifiedName

    return [QualifiedName("public", n) for n in
            ("sponsor_connections", "sponsor_visible_memos", "sponsor_chat_messages")]


def test_an_export_on_two_sessions_writes_the_files_one_session_writes(demo_db, tmp_path):
    from playbook.exports import export_tables, require_sound_export

    with demo_db.connect() as conn:
        one = export_tables(conn, _coaching_tables(), tmp_path / "one", purpose="t",
                            show_progress=False, jobs=1)
        two = export_tables(conn, _coaching_tables(), tmp_path / "two", purpose="t",
                            show_progress=True, jobs=2)
        assert not conn.info.transaction_status  # idle: the export's transaction ended
    assert [f.table for f in two.files] == [str(t) for t in _coaching_tables()]
    assert [(f.rows, f.bytes, f.sha256) for f in two.files] == \
        [(f.rows, f.bytes, f.sha256) for f in one.files]
    assert require_sound_export(tmp_path / "two").files == two.files


def test_export_sessions_share_one_snapshot_so_rows_committed_meanwhile_are_in_no_file(
        demo_db):
    from playbook import exports

    with demo_db.connect() as conn, demo_db.connect(autocommit=True) as application:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.execute("SELECT set_config('TimeZone', 'Pacific/Chatham', false)")
        before = conn.execute("SELECT count(*) FROM public.sponsor_visible_memos").fetchone()[0]
        helpers = exports._snapshot_sessions(conn, 2)
        try:
            assert len(helpers) == 2
            application.execute(
                "INSERT INTO public.sponsor_visible_memos (connection_id, practitioner_user_id, "
                "memo) SELECT id, practitioner_user_id, 'written during the export' "
                "FROM public.sponsor_connections LIMIT 1")
            for helper in helpers:
                seen = helper.execute(
                    "SELECT count(*), current_setting('TimeZone'), "
                    "current_setting('transaction_isolation') "
                    "FROM public.sponsor_visible_memos").fetchone()
                assert seen == (before, "Pacific/Chatham", "repeatable read")
        finally:
            for helper in helpers:
                helper.close()
        conn.rollback()


@pytest.fixture
def one_slot_role(demo_db):
    """A role that may read everything but hold one connection at a time: its URL."""
    with demo_db.connect(autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS export_single")
        admin.execute("CREATE ROLE export_single LOGIN BYPASSRLS PASSWORD 'only-one' "
                      "CONNECTION LIMIT 1")
        admin.execute("GRANT USAGE ON SCHEMA public TO export_single")
        admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO export_single")
        admin.execute("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO export_single")
    yield psycopg.conninfo.make_conninfo(demo_db.url, user="export_single",
                                         password="only-one")
    with demo_db.connect(autocommit=True) as admin:
        admin.execute("DROP OWNED BY export_single")
        admin.execute("DROP ROLE export_single")


def test_an_export_falls_back_to_one_session_when_no_connection_slot_is_left(
        demo_db, one_slot_role, tmp_path):
    from playbook.exports import export_tables

    with psycopg.connect(one_slot_role) as conn:
        manifest = export_tables(conn, _coaching_tables(), tmp_path / "x", purpose="t",
                                 show_progress=False, jobs=3)
    with demo_db.connect() as conn:
        reference = export_tables(conn, _coaching_tables(), tmp_path / "ref", purpose="t",
                                  show_progress=False, jobs=1)
    assert [f.sha256 for f in manifest.files] == [f.sha256 for f in reference.files]
    assert all(f.rows for f in manifest.files)


def test_with_one_connection_slot_step_one_still_writes_its_archive_and_digests(
        demo_db, one_slot_role, tmp_path):
    """pg_dump cannot share the export's snapshot when the export's own session holds the
    role's only connection slot: the archive is taken once that session is closed, and
    the manifest says it is of its own moment (and why)."""
    from playbook.procedures.rollback_export import export_with_archive

    manifest = export_with_archive(
        lambda: psycopg.connect(one_slot_role), one_slot_role, _coaching_tables(),
        tmp_path / "x", purpose="t", extra={}, archive=tmp_path / "x" / "a.dump",
        show_progress=False)
    note = manifest.extra["archive"]["snapshot"]
    assert note.startswith("pg_dump's own") and "too many connections" in note
    assert "only-one" not in json.dumps(manifest.extra)
    assert (tmp_path / "x" / "a.dump").read_bytes()[:5] == b"PGDMP"
    with demo_db.connect() as conn:  # the suite's own count of every exported table
        for entry in manifest.files:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(entry.schema, entry.name))).fetchone()[0]
            assert entry.rows == rows and entry.value_digest.startswith(f"hre1:{rows}:")
    assert not (tmp_path / "x" / "INCOMPLETE").exists()


def test_a_failing_table_stops_a_parallel_export_without_a_manifest(demo_db, tmp_path):
    from psycopg import errors, sql

    from playbook.exports import export_tables

    tables = _coaching_tables()
    where = {str(tables[0]): sql.SQL("no_such_column = 1")}
    with demo_db.connect() as conn:
        with pytest.raises(errors.UndefinedColumn):
            export_tables(conn, tables, tmp_path / "x", purpose="t", show_progress=False,
                          where=where, jobs=2)
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session is usable again
    assert not (tmp_path / "x" / "manifest.json").exists()


# --- fix-ups from the reliability review ------------------------------------------------


def test_include_dependents_given_as_a_string_is_refused_in_plain_words(demo_db, coaching):
    before = demo_db.fingerprint()
    with pytest.raises(ConfigurationError,
                       match="include_dependents must be a list of labels, got a string") as no:
        with demo_db.connect() as conn:
            drops.build_drop_plan(conn, coaching, "view public.coaching_summary")
    assert "'v', 'i'" not in str(no.value)  # not spelled out character by character
    assert demo_db.fingerprint() == before


def test_a_pg_dump_older_than_the_server_is_refused_before_any_file_is_written(
        demo_db, coaching, tmp_path, monkeypatch):
    from playbook.db import pgbinaries
    from playbook.errors import ToolTooOld

    run = begin_run("20_rollback_coaching_tables")
    server_major = int(run.server_version.split(".")[0])
    older = [b for b in pgbinaries.candidate_bindirs() if b.major < server_major]
    assert older, "this machine needs an older PostgreSQL's client tools (Debian's 15)"
    # A machine whose only client tools are older than the server.
    monkeypatch.setattr(pgbinaries, "candidate_bindirs", lambda: older)
    folder = tmp_path / "export"
    with pytest.raises(ToolTooOld, match="older than the server"):
        steps20.export_data(run, coaching, folder, show_progress=False)
    assert not folder.exists()  # no CSV-only export is left for a drop to accept
    with pytest.raises(ExportMismatch), demo_db.connect() as conn:
        drops.perform_drop(conn, coaching, folder)
    assert _tables_present(demo_db) == set(COACHING)


def test_the_rollback_reports_how_long_it_held_the_tables_locked(demo_db, coaching, exported):
    run = begin_run("20_rollback_coaching_tables", mode="execute",
                    confirm_database=demo_db.name)
    frame = steps20.perform_rollback(run, coaching, exported)
    held = frame.attrs["lock_hold_ms"]
    assert held > 0
    blocked = frame.attrs["writes_blocked_ms"]
    assert blocked >= held
    committed = frame[frame["check"] == "committed"].iloc[0]
    assert committed["observed"] == (f"tables locked {held:.0f} ms; writes to them blocked "
                                     f"{blocked:.0f} ms")


def test_an_export_folder_that_cannot_be_created_is_one_playbook_error(demo_db, coaching,
                                                                       tmp_path):
    from playbook.errors import ExportFailed

    before = demo_db.fingerprint()
    (tmp_path / "a-file").write_text("not a folder")
    folder = tmp_path / "a-file" / "export"
    run = begin_run("20_rollback_coaching_tables")
    with pytest.raises(ExportFailed, match="nothing was dropped or changed") as failed:
        steps20.export_data(run, coaching, folder, show_progress=False)
    assert "choose another export_dir" in str(failed.value)
    assert demo_db.fingerprint() == before


def test_before_the_export_the_gate_says_it_will_be_verified_and_the_drop_still_refuses(
        demo_db, coaching, tmp_path):
    answers = {qid: "yes" for qid in steps20.GATE_QUESTIONS}
    run = begin_run("20_rollback_coaching_tables", mode="execute",
                    confirm_database=demo_db.name, answers=answers)
    folder = tmp_path / "not-exported-yet"
    gate = steps20.gate(run, coaching, folder)
    row = gate.table().set_index("question").loc["data_exported"]
    # Nothing can be verified yet (notebook 20 exports after this gate): no claim of it.
    assert row["verified"] == "" and "verified before the drop" in row["asked"]
    assert "Not verified yet" in row["asked"]
    gate.check()  # the operator's yes opens the gate...
    before = demo_db.fingerprint()
    with pytest.raises(ExportMismatch, match="No export manifest"):
        # ...but the drop refuses without the export
        steps20.perform_rollback(run, coaching, folder)
    assert demo_db.fingerprint() == before


def test_after_the_export_the_gate_shows_the_export_verified(demo_db, coaching, exported):
    run = begin_run("20_rollback_coaching_tables",
                    answers={qid: "yes" for qid in steps20.GATE_QUESTIONS})
    row = steps20.gate(run, coaching, exported).table().set_index(
        "question").loc["data_exported"]
    assert row["verified"] == "pass" and row["evidence"].startswith("verified:")


def test_an_objects_oid_is_found_while_it_exists_and_none_once_gone(demo_db, coaching):
    from playbook.changesets.objects import migration_objects, object_oid

    table = next(o for o in migration_objects(coaching) if o.kind == "table")
    with demo_db.connect() as conn:
        assert isinstance(object_oid(conn, table), int)
        conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(
            sql.Identifier(table.schema, table.name)))
        assert object_oid(conn, table) is None
        conn.rollback()
