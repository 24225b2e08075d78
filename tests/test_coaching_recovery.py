"""Rehearsed recoveries: the coaching tables come back from their export, proven equal."""

from __future__ import annotations

from pathlib import Path

import pytest

from playbook import drops, recovery
from playbook.errors import ExportMismatch, LockBusy, PreconditionFailed
from playbook.fingerprint import table_checksum
from playbook.locks import take_playbook_lock
from playbook.migrations import load_migration
from playbook.runs import begin_run

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
    drops.export_migration_data(begin_run("20_rollback_coaching_tables"), coaching, folder,
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
    drops.export_migration_data(begin_run("20_rollback_coaching_tables"), coaching, folder,
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
    drops.export_migration_data(begin_run("20_rollback_coaching_tables"), coaching, folder,
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
