"""Rehearsed recoveries: the coaching tables come back from their export, proven equal."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from psycopg import sql

from playbook.changesets.migration import load_migration
from playbook.db.fingerprint import table_checksum
from playbook.db.locks import take_playbook_lock
from playbook.db.names import QualifiedName
from playbook.db.queries import run_script
from playbook.errors import ExportMismatch, LockBusy, PreconditionFailed, VerificationFailed
from playbook.exports import export_tables
from playbook.procedures import drops, recovery
from playbook.runs import begin_run
from playbook.steps import rollback_coaching_tables as steps20

COACHING = (("public", "sponsor_connections"), ("public", "sponsor_chat_messages"),
            ("public", "sponsor_visible_memos"))


@pytest.fixture
def coaching():
    return load_migration("coaching_tables")


def _checksums(db) -> dict:
    with db.connect() as conn:
        return {t: table_checksum(conn, *t) for t in COACHING}


@pytest.fixture
def rolled_back(demo_db, coaching, tmp_path) -> tuple[Path, dict]:
    """Exported and dropped; returns the export folder and the checksums taken before."""
    checksums = _checksums(demo_db)
    folder = tmp_path / "export"
    steps20.export_data(begin_run("20_rollback_coaching_tables"), coaching, folder,
                                show_progress=False)
    with demo_db.connect() as conn:
        assert drops.perform_drop(conn, coaching, folder).committed
    return folder, checksums


def test_recovery_brings_back_every_row_identical(demo_db, coaching, rolled_back):
    folder, before = rolled_back
    with demo_db.connect() as conn:
        result = recovery.perform_recovery(conn, coaching, folder)
    assert result.committed and all(c.passed for c in result.checks)
    assert _checksums(demo_db) == before


def test_recovered_sequences_hand_out_ids_past_max_and_empty_tables_restart(
        demo_db, coaching, tmp_path):
    with demo_db.connect() as conn:
        conn.execute("DELETE FROM public.sponsor_chat_messages")
        conn.commit()
    folder = tmp_path / "export"
    steps20.export_data(begin_run("20_rollback_coaching_tables"), coaching, folder,
                                show_progress=False)
    with demo_db.connect() as conn:
        drops.perform_drop(conn, coaching, folder)
    with demo_db.connect() as conn:
        recovery.perform_recovery(conn, coaching, folder)
        new_connection = conn.execute(
            "INSERT INTO public.sponsor_connections (practitioner_user_id, sponsor_user_id) "
            "SELECT practitioner_user_id, sponsor_user_id FROM public.sponsor_connections "
            "LIMIT 1 RETURNING id").fetchone()[0]
        message = conn.execute(
            "INSERT INTO public.sponsor_chat_messages (connection_id, sender_id, body) "
            "SELECT id, practitioner_user_id, 'hello' FROM public.sponsor_connections "
            "LIMIT 1 RETURNING id").fetchone()[0]
        conn.rollback()
    assert new_connection == 21  # 20 connections in the demo data
    assert message == 1  # the empty table's sequence starts again


def test_recovery_refuses_a_damaged_export_and_changes_nothing(demo_db, coaching, rolled_back):
    folder, _ = rolled_back
    path = folder / "public.sponsor_chat_messages.csv"
    path.write_bytes(path.read_bytes() + b"999,1,x,y,,\n")
    before = demo_db.fingerprint()
    with pytest.raises(ExportMismatch, match="sponsor_chat_messages.csv"):
        with demo_db.connect() as conn:
            recovery.perform_recovery(conn, coaching, folder)
    assert demo_db.fingerprint() == before


def test_recovery_refuses_an_incomplete_export(demo_db, coaching, rolled_back):
    import json

    folder, _ = rolled_back
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if "memos" not in f["file"]]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportMismatch, match="incomplete: public.sponsor_visible_memos"):
        recovery.require_complete_export(coaching, folder)


def test_recovery_refuses_a_missing_export(coaching, tmp_path):
    with pytest.raises(ExportMismatch, match="No export manifest"):
        recovery.require_complete_export(coaching, tmp_path / "nowhere")


def test_recovery_refuses_when_the_tables_are_back_with_rows(demo_db, coaching, tmp_path):
    folder = tmp_path / "export"
    steps20.export_data(begin_run("20_rollback_coaching_tables"), coaching, folder,
                                show_progress=False)
    before = demo_db.fingerprint()
    with pytest.raises(PreconditionFailed, match="would duplicate"):
        with demo_db.connect() as conn:
            recovery.perform_recovery(conn, coaching, folder)
    assert demo_db.fingerprint() == before


def test_recovery_is_refused_while_another_operator_holds_the_lock(demo_db, coaching,
                                                                   rolled_back):
    folder, _ = rolled_back
    before = demo_db.fingerprint()
    with demo_db.connect(application_name="operator-one") as first:
        take_playbook_lock(first, drops.lock_scope(coaching))
        with pytest.raises(LockBusy, match="operator-one"):
            with demo_db.connect() as second:
                recovery.perform_recovery(second, coaching, folder)
        first.rollback()
    assert demo_db.fingerprint() == before


# --- the load: foreign keys and secondary indexes set aside, re-created, proven ----------

COACHING_TABLES = [QualifiedName(*t) for t in COACHING]


def _schema(db) -> dict[str, str]:
    with db.connect() as conn:
        return recovery.schema_snapshot(conn, COACHING_TABLES)


def _rewrite_export_file(folder: Path, file: str, edit) -> None:
    """Change one exported file and its manifest entry consistently (rows, bytes, SHA-256),
    as a tampered or foreign export would look: the checksums alone cannot catch it."""
    path = folder / file
    lines = path.read_bytes().splitlines(keepends=True)
    lines = edit(lines)
    path.write_bytes(b"".join(lines))
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["file"] == file:
            entry.update(rows=len(lines) - 1, bytes=path.stat().st_size,
                         sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_load_sets_aside_only_foreign_keys_and_secondary_indexes(demo_db):
    with demo_db.connect() as conn:
        set_aside = recovery.objects_to_set_aside(conn, COACHING_TABLES)
    names = {(o.kind, o.name) for o in set_aside}
    # Foreign keys between the migration's tables only: one into public.profiles is kept.
    assert {n for k, n in names if k == "foreign key"} == {
        "sponsor_chat_messages_connection_id_fkey", "sponsor_visible_memos_connection_id_fkey"}
    assert ("index", "sponsor_chat_messages_connection_id_idx") in names
    assert len([o for o in set_aside if o.kind == "index"]) == 6
    assert not any(o.name.endswith("_pkey") for o in set_aside)  # primary keys stay
    index = next(o for o in set_aside if o.name == "sponsor_chat_messages_connection_id_idx")
    # Names in the server's definitions are qualified, whatever the session's search_path.
    assert "ON public.sponsor_chat_messages" in index.definition


@pytest.mark.both_versions
def test_schema_after_recovery_equals_schema_after_a_plain_migration_apply(
        demo_db, coaching, tmp_path):
    applied = _schema(demo_db)  # the demo database got the migration by a plain apply
    assert "index public.sponsor_chat_messages sponsor_chat_messages_sender_id_idx" in applied
    assert ("constraint public.sponsor_chat_messages sponsor_chat_messages_connection_id_fkey"
            in applied)
    assert any(k.startswith("policy public.sponsor_visible_memos") for k in applied)
    assert any(k.startswith("trigger public.sponsor_connections") for k in applied)
    assert any(k.startswith("internal trigger of public.sponsor_chat_messages") and
               " on public.profiles " in k for k in applied)
    folder = tmp_path / "export"
    steps20.export_data(begin_run("20_rollback_coaching_tables"), coaching, folder,
                                show_progress=False)
    with demo_db.connect() as conn:
        assert drops.perform_drop(conn, coaching, folder).committed
    with demo_db.connect() as conn:
        assert recovery.perform_recovery(conn, coaching, folder).committed
    assert recovery.schema_differences(applied, _schema(demo_db)) == []


def test_a_foreign_key_broken_by_the_export_is_rolled_back_naming_the_constraint(
        demo_db, coaching, rolled_back):
    folder, _ = rolled_back

    def orphan_first_message(lines: list[bytes]) -> list[bytes]:
        header, first = lines[0].decode(), lines[1].decode().split(",")
        first[header.split(",").index("connection_id")] = "999999"
        return [lines[0], ",".join(first).encode(), *lines[2:]]

    _rewrite_export_file(folder, "public.sponsor_chat_messages.csv", orphan_first_message)
    before = demo_db.fingerprint()
    with pytest.raises(VerificationFailed,
                       match=r"sponsor_chat_messages_connection_id_fkey.*999999.*rolled back"):
        with demo_db.connect() as conn:
            recovery.perform_recovery(conn, coaching, folder)
    assert demo_db.fingerprint() == before  # nothing left behind: the migration is absent
    assert demo_db.scalar("SELECT to_regclass('public.sponsor_connections')") is None


def test_a_duplicated_row_in_the_export_is_rolled_back_naming_the_primary_key(
        demo_db, coaching, rolled_back):
    folder, _ = rolled_back
    _rewrite_export_file(folder, "public.sponsor_connections.csv",
                         lambda lines: [*lines, lines[1]])
    before = demo_db.fingerprint()
    with pytest.raises(VerificationFailed, match=r"sponsor_connections_pkey.*rolled back"):
        with demo_db.connect() as conn:
            recovery.perform_recovery(conn, coaching, folder)
    assert demo_db.fingerprint() == before


THINGS_MIGRATION = """
CREATE TABLE IF NOT EXISTS public.things (id bigint PRIMARY KEY, label text NOT NULL);
CREATE TABLE IF NOT EXISTS public.thing_parts (
  id bigserial PRIMARY KEY,
  thing_id bigint NOT NULL REFERENCES public.things (id),
  part text);
CREATE INDEX IF NOT EXISTS thing_parts_thing_id_idx ON public.thing_parts (thing_id);
-- A foreign key FROM a table the migration does not own INTO one of its tables.
ALTER TABLE public.audit_notes ADD CONSTRAINT audit_notes_thing_fkey
  FOREIGN KEY (thing_id) REFERENCES public.things (id);
"""


def test_foreign_keys_from_other_tables_into_the_migration_tables_are_kept(
        demo_db, tmp_path):
    deploy = tmp_path / "things.sql"
    deploy.write_text(THINGS_MIGRATION)
    things = load_migration(deploy)
    tables = [QualifiedName("public", "things"), QualifiedName("public", "thing_parts")]
    with demo_db.connect() as conn:
        conn.execute("CREATE TABLE public.audit_notes (id int PRIMARY KEY, thing_id bigint)")
        conn.execute(THINGS_MIGRATION)
        conn.execute("INSERT INTO public.things SELECT g, 'thing ' || g "
                     "FROM generate_series(1, 50) g")
        conn.execute("INSERT INTO public.thing_parts (thing_id, part) "
                     "SELECT 1 + g % 50, 'part' FROM generate_series(1, 500) g")
        conn.execute("INSERT INTO public.audit_notes VALUES (1, NULL)")
        conn.commit()
        applied = recovery.schema_snapshot(conn, tables)
        set_aside = {o.name for o in recovery.objects_to_set_aside(conn, tables)}
    assert set_aside == {"thing_parts_thing_id_fkey", "thing_parts_thing_id_idx"}
    folder = tmp_path / "export"
    with demo_db.connect() as conn:
        export_tables(conn, tables, folder, purpose="test", show_progress=False,
                      extra={"migration": things.name,
                             "import_order": [str(t) for t in tables]})
        # The rollback, with the other table's foreign key named as a dependent.
        conn.execute("ALTER TABLE public.audit_notes DROP CONSTRAINT audit_notes_thing_fkey")
        conn.execute("DROP TABLE public.thing_parts, public.things")
        conn.commit()
    audit_notes = demo_db.scalar("SELECT count(*) FROM public.audit_notes")
    with demo_db.connect() as conn:
        result = recovery.perform_recovery(conn, things, folder)
    assert result.committed and result.imported == {"public.things": 50,
                                                    "public.thing_parts": 500}
    with demo_db.connect() as conn:
        assert recovery.schema_differences(applied,
                                           recovery.schema_snapshot(conn, tables)) == []
        assert conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'audit_notes_thing_fkey'").fetchone()[0] == (
            "FOREIGN KEY (thing_id) REFERENCES things(id)")
    assert demo_db.scalar("SELECT count(*) FROM public.audit_notes") == audit_notes


def test_logins_can_read_profiles_while_the_recovery_loads(demo_db, coaching, rolled_back):
    folder, _ = rolled_back
    manifest = recovery.require_complete_export(coaching, folder)
    with demo_db.connect(application_name="recovery") as conn:
        run_script(conn, coaching.deploy)
        recovery.bulk_import(conn, recovery.import_order(manifest), folder, manifest)
        # Mid-transaction, as long as the load's locks are held: a login-like read of
        # every protected table gets through at once.
        with demo_db.connect(autocommit=True) as login:
            login.execute("SET lock_timeout = '200ms'")
            for table in coaching.protected_tables:
                login.execute(sql.SQL("SELECT count(*) FROM {}").format(table.identifier))
        strong = conn.execute(
            "SELECT l.relation::regclass::text, l.mode FROM pg_locks l "
            "WHERE l.pid = pg_backend_pid() AND l.relation = ANY(%s::regclass[]) "
            "AND l.mode IN ('AccessExclusiveLock', 'ExclusiveLock')",
            ([str(t) for t in coaching.protected_tables],)).fetchall()
        conn.rollback()
    assert strong == []


def test_a_load_that_would_leave_a_different_schema_is_rolled_back(
        demo_db, coaching, rolled_back, monkeypatch):
    """A defect in what is re-created (here: an index rebuilt on other columns) is caught
    by the before/after catalog comparison, inside the transaction."""
    folder, _ = rolled_back
    real = recovery.objects_to_set_aside

    def one_index_redefined(conn, tables):
        return [dataclasses.replace(o, definition=o.definition.replace(
                    "(connection_id)", "(connection_id, id)"))
                if o.name == "sponsor_chat_messages_connection_id_idx" else o
                for o in real(conn, tables)]

    monkeypatch.setattr(recovery, "objects_to_set_aside", one_index_redefined)
    before = demo_db.fingerprint()
    with pytest.raises(VerificationFailed, match=r"schema is not what the migration created "
                       r"\(index public.sponsor_chat_messages sponsor_chat_messages_connection"):
        with demo_db.connect() as conn:
            recovery.perform_recovery(conn, coaching, folder)
    assert demo_db.fingerprint() == before
    assert demo_db.scalar("SELECT to_regclass('public.sponsor_chat_messages')") is None


# --- the load without per-row checks: foreign keys into other tables checked in one pass --

def _orphan_first_sender(lines: list[bytes]) -> list[bytes]:
    header, first = lines[0].decode(), lines[1].decode().split(",")
    first[header.split(",").index("sender_id")] = "00000000-0000-0000-0000-0000000000ff"
    return [lines[0], ",".join(first).encode(), *lines[2:]]


def test_a_message_whose_sender_is_not_a_profile_is_rolled_back_naming_the_foreign_key(
        demo_db, coaching, rolled_back):
    folder, _ = rolled_back
    _rewrite_export_file(folder, "public.sponsor_chat_messages.csv", _orphan_first_sender)
    before = demo_db.fingerprint()
    with pytest.raises(VerificationFailed, match=r"sponsor_chat_messages_sender_id_fkey.*"
                       r"00000000-0000-0000-0000-0000000000ff.*rolled back"):
        with demo_db.connect() as conn:
            recovery.perform_recovery(conn, coaching, folder)
    assert demo_db.fingerprint() == before
    assert demo_db.scalar("SELECT to_regclass('public.sponsor_chat_messages')") is None


def test_a_profile_the_loaded_messages_point_at_cannot_be_deleted_before_commit(
        demo_db, coaching, rolled_back):
    folder, _ = rolled_back
    manifest = recovery.require_complete_export(coaching, folder)
    with demo_db.connect() as conn:
        run_script(conn, coaching.deploy)
        recovery.bulk_import(conn, recovery.import_order(manifest), folder, manifest)
        sender = conn.execute("SELECT sender_id FROM public.sponsor_chat_messages "
                              "LIMIT 1").fetchone()[0]
        with demo_db.connect() as app:
            app.execute("SET lock_timeout = '200ms'")
            # The messages are not committed yet, so only a row lock can stop this delete.
            with pytest.raises(Exception, match="lock timeout"):
                app.execute("DELETE FROM public.profiles WHERE id = %s", (sender,))
            app.rollback()
        conn.rollback()


@pytest.fixture
def unprivileged_role(demo_db):
    """A role that owns nothing special and is no superuser: it may not set
    session_replication_role, so the load keeps its per-row checks."""
    role = f"recoverer_{demo_db.name}"
    with demo_db.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(role)))
        # The migration's policies call auth.uid(); the API role they name is granted to it.
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA auth TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT authenticated TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT, REFERENCES ON public.profiles TO {}").format(
            sql.Identifier(role)))
        conn.commit()
    yield role
    with demo_db.connect() as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        conn.commit()


@pytest.mark.parametrize("orphan", [False, True])
def test_a_role_without_session_replication_role_recovers_with_row_checks(
        demo_db, coaching, rolled_back, unprivileged_role, orphan):
    folder, before = rolled_back
    if orphan:
        _rewrite_export_file(folder, "public.sponsor_chat_messages.csv", _orphan_first_sender)
    fingerprint = demo_db.fingerprint()
    with demo_db.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(unprivileged_role)))
        if orphan:
            with pytest.raises(VerificationFailed,
                               match=r"sponsor_chat_messages_sender_id_fkey.*rolled back"):
                recovery.perform_recovery(conn, coaching, folder)
        else:
            assert recovery.perform_recovery(conn, coaching, folder).committed
    if orphan:
        assert demo_db.fingerprint() == fingerprint
    else:
        assert _checksums(demo_db) == before


def test_a_session_already_in_replica_mode_still_checks_the_foreign_keys(
        demo_db, coaching, rolled_back):
    folder, _ = rolled_back
    _rewrite_export_file(folder, "public.sponsor_chat_messages.csv", _orphan_first_sender)
    before = demo_db.fingerprint()
    with demo_db.connect() as conn:
        conn.execute("SET session_replication_role = replica")
        conn.commit()
        with pytest.raises(VerificationFailed, match=r"sponsor_chat_messages_sender_id_fkey"):
            recovery.perform_recovery(conn, coaching, folder)
    assert demo_db.fingerprint() == before


# --- the proof: the rows' values digested on the server, against the export's digest ----


def test_the_export_records_a_digest_of_the_values_that_the_suite_can_recompute(
        demo_db, coaching, tmp_path):
    folder = tmp_path / "export"
    steps20.export_data(begin_run("20_rollback_coaching_tables"), coaching, folder,
                        show_progress=False)
    step_one = json.loads((folder / "manifest.json").read_text())
    ours = {}
    with demo_db.connect() as conn:  # the suite's own SQL, over the columns the files hold
        for schema, name in COACHING:
            entry = next(e for e in step_one["files"] if e["table"] == f"{schema}.{name}")
            with open(folder / entry["file"], encoding="utf-8") as handle:
                header = handle.readline().strip().split(",")
            row = sql.SQL(", ").join(sql.Identifier(c) for c in header)
            count, high, low = conn.execute(sql.SQL(
                "SELECT count(*), sum(x >> 32), sum(x & 4294967295) FROM (SELECT "
                "hash_record_extended(ROW({}), 0) AS x FROM {}.{}) AS t").format(
                row, sql.Identifier(schema), sql.Identifier(name))).fetchone()
            ours[entry["table"]] = f"hre1:{count}:{high or 0}:{low or 0}"
            assert count == entry["rows"] > 0
    assert {e["table"]: e["value_digest"] for e in step_one["files"]} == ours
    assert step_one["extra"]["archive"]["snapshot"] == "the CSV files'"
    with demo_db.connect() as conn:  # nothing written since: step 1's export stays
        assert drops.perform_drop(conn, coaching, folder).committed
    final = json.loads((folder / "manifest.json").read_text())
    assert {e["table"]: e["value_digest"] for e in final["files"]} == ours


def test_a_table_that_does_not_hold_the_exported_values_fails_the_server_side_proof(
        demo_db, coaching, rolled_back):
    """An export edited after the fact (file, size and SHA-256 rewritten to match) loads
    fine and keeps every constraint, but its values are not those the export digested:
    the proof refuses and everything rolls back."""
    folder, _ = rolled_back

    def edit_read_at(lines: list[bytes]) -> list[bytes]:
        header = lines[0].decode().rstrip("\n").split(",")
        fields = lines[1].decode().rstrip("\n").split(",")
        fields[header.index("body")] = '"edited after the export"'
        return [lines[0], (",".join(fields) + "\n").encode(), *lines[2:]]

    _rewrite_export_file(folder, "public.sponsor_chat_messages.csv", edit_read_at)
    before = demo_db.fingerprint()
    with pytest.raises(VerificationFailed, match=r"does not equal the export.*rolled back"):
        with demo_db.connect() as conn:
            recovery.perform_recovery(conn, coaching, folder)
    assert demo_db.fingerprint() == before


def test_an_export_without_a_digest_is_proven_by_its_csv_sha256_as_before(
        demo_db, coaching, rolled_back):
    folder, before = rolled_back
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        entry.pop("value_digest")  # an export written before digests existed
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with demo_db.connect() as conn:
        result = recovery.perform_recovery(conn, coaching, folder)
    assert result.committed
    assert sum("SHA-256 equals the export's" in c.name for c in result.checks) == 3
    assert not any("digest" in c.name for c in result.checks)
    assert _checksums(demo_db) == before


def test_after_writes_since_step_one_only_the_unchanged_tables_keep_their_digests(
        demo_db, coaching, tmp_path):
    """No digest is computed under the drop's write lock (it would hold writers up): a
    table written since step 1 is proven by its CSV's SHA-256, the others by step 1's
    digest of the very same rows."""
    folder = tmp_path / "export"
    steps20.export_data(begin_run("20_rollback_coaching_tables"), coaching, folder,
                        show_progress=False)
    step_one = {e["table"]: e for e in json.loads((folder / "manifest.json").read_text())["files"]}
    with demo_db.connect() as conn:
        conn.execute("UPDATE public.sponsor_visible_memos SET memo = memo || ' (edited)' "
                     "WHERE id = (SELECT min(id) FROM public.sponsor_visible_memos)")
        conn.commit()
    before = _checksums(demo_db)
    with demo_db.connect() as conn:
        assert drops.perform_drop(conn, coaching, folder).committed
    final = {e["table"]: e for e in json.loads((folder / "manifest.json").read_text())["files"]}
    assert final["public.sponsor_visible_memos"]["value_digest"] == ""
    for table in ("public.sponsor_connections", "public.sponsor_chat_messages"):
        assert final[table]["sha256"] == step_one[table]["sha256"]
        assert final[table]["value_digest"] == step_one[table]["value_digest"] != ""
    with demo_db.connect() as conn:
        result = recovery.perform_recovery(conn, coaching, folder)
    assert result.committed
    names = [c.name for c in result.checks]
    assert "public.sponsor_visible_memos SHA-256 equals the export's" in names
    assert sum("server-side digest" in n for n in names) == 2
    assert _checksums(demo_db) == before
