"""Backups as the full-restore notebook (and later the surgical restore) reads them:
taken with pg_dump -Fc, timed from their own header, chosen older than the migration,
proved readable to the last byte, test-restored into a scratch database."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from helpers import run_cli
from playbook import backups, scratch_restore
from playbook.db import localdb
from playbook.db.names import QualifiedName
from playbook.db.pgbinaries import client_program
from playbook.errors import BackupUnusable, ToolTooOld


def test_backup_is_named_with_the_utc_time_and_timed_from_its_own_header(demo_db, tmp_path):
    before = datetime.now(UTC).replace(microsecond=0)
    taken = backups.take_backup(demo_db.url, tmp_path)
    assert taken.path.name.startswith(demo_db.name) and taken.path.name.endswith("Z.dump")
    assert before - timedelta(seconds=1) <= taken.taken_at <= datetime.now(UTC)
    assert taken.database == demo_db.name and taken.size == taken.path.stat().st_size
    # A copy gets a new mtime; the time the backup was taken does not change.
    copy = tmp_path / "copied" / taken.path.name
    copy.parent.mkdir()
    shutil.copy(taken.path, copy)
    os.utime(copy, (time.time() + 86400, time.time() + 86400))
    assert backups.list_backups(copy.parent)[0].taken_at == taken.taken_at


def test_the_newest_backup_taken_before_the_migration_is_chosen(demo_db, tmp_path):
    first = backups.take_backup(demo_db.url, tmp_path)
    time.sleep(1.05)
    migration = datetime.now(UTC)
    time.sleep(1.05)
    second = backups.take_backup(demo_db.url, tmp_path)
    assert [b.path for b in backups.list_backups(tmp_path)] == [first.path, second.path]
    assert backups.choose_backup(tmp_path, before=migration.isoformat()).path == first.path
    assert backups.choose_backup(tmp_path).path == second.path


def test_a_backup_newer_than_the_migration_is_refused_even_when_named(demo_db, tmp_path):
    taken = backups.take_backup(demo_db.url, tmp_path)
    migration = (taken.taken_at - timedelta(minutes=5)).isoformat()
    with pytest.raises(BackupUnusable, match="No usable backup taken before"):
        backups.choose_backup(tmp_path, before=migration)
    with pytest.raises(BackupUnusable, match="not before the migration"):
        backups.choose_backup(tmp_path, before=migration, backup_file=taken.path.name)


def test_a_truncated_archive_is_caught_before_any_restore(demo_db, tmp_path):
    taken = backups.take_backup(demo_db.url, tmp_path)
    data = taken.path.read_bytes()
    taken.path.write_bytes(data[: int(len(data) * 0.9)])
    damaged = backups.read_backup(taken.path)
    proof = backups.prove_readable(damaged)
    assert not proof.passed
    with pytest.raises(BackupUnusable, match="truncated|unreadable"):
        proof.require()


@pytest.mark.parametrize("content", [b"", b"PGDMP garbage", b"not a backup at all\n"])
def test_an_unreadable_file_is_listed_with_its_problem_and_refused(tmp_path, content):
    (tmp_path / "x.dump").write_bytes(content)
    listed = backups.list_backups(tmp_path)
    assert len(listed) == 1 and listed[0].problem
    with pytest.raises(BackupUnusable):
        backups.choose_backup(tmp_path, backup_file="x.dump")
    with pytest.raises(BackupUnusable, match="No usable backup"):
        backups.choose_backup(tmp_path)


def test_a_missing_backup_or_folder_is_refused(tmp_path):
    with pytest.raises(BackupUnusable, match="does not exist"):
        backups.choose_backup(tmp_path, backup_file="nope.dump")
    with pytest.raises(BackupUnusable, match="folder .* does not exist"):
        backups.list_backups(tmp_path / "missing")


def test_test_restore_goes_to_a_scratch_database_and_counts_equal_the_archive(
        demo_db, pg_cluster, tmp_path):
    taken = backups.take_backup(demo_db.url, tmp_path)
    before = demo_db.fingerprint()
    restored = scratch_restore.test_restore(taken, demo_db.url)
    assert restored.passed and restored.counts["public.sponsor_chat_messages"] == 200
    assert restored.counts == backups.archive_counts(taken)
    assert restored.privileges, "the application's grants came back with the tables"
    assert demo_db.fingerprint() == before
    with psycopg_connect(pg_cluster.admin_url) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (restored.database,)).fetchone()[0]
    assert left == 0, "the scratch database is dropped afterwards"


def psycopg_connect(url):
    import psycopg

    return psycopg.connect(url)


def test_the_password_reaches_pg_dump_through_its_environment_never_argv(
        demo_db, tmp_path, monkeypatch):
    password = localdb.connecting.parse(demo_db.url)["password"]
    seen = []
    real_run = subprocess.run

    def recording_run(args, **kwargs):
        seen.append((args, kwargs.get("env") or {}))
        return real_run(args, **kwargs)

    monkeypatch.setattr(backups.subprocess, "run", recording_run)
    backups.take_backup(demo_db.url, tmp_path)
    dumps = [(args, env) for args, env in seen if args[0].endswith("pg_dump")]
    assert dumps and all(password not in " ".join(args) for args, _ in dumps)
    assert all(env.get("PGPASSWORD") == password for _, env in dumps)


def test_tools_older_than_the_server_are_refused(demo_db, tmp_path):
    taken = backups.take_backup(demo_db.url, tmp_path)
    with pytest.raises(ToolTooOld, match="older than the server"):
        backups.require_tools_for(taken, 99)


@pytest.mark.parametrize("name", ["fo'o", 'ba"r', "x; DROP TABLE y", "../../etc"])
def test_hostile_database_names_make_plain_file_names(name):
    file = backups.backup_file_name(name, datetime(2025, 1, 26, 10, 0, tzinfo=UTC))
    assert "/" not in file and ";" not in file and "'" not in file and '"' not in file
    assert file.endswith("-20250126T100000Z.dump")


def test_playbook_backup_take_and_list_from_the_command_line(demo_db, project_env, tmp_path):
    env = {**project_env, "DATABASE_URL": demo_db.url}
    taken = run_cli("backup", "take", "--folder", str(tmp_path), env=env)
    assert taken.returncode == 0, taken.stderr
    assert localdb.connecting.parse(demo_db.url)["password"] not in taken.stdout + taken.stderr
    listed = run_cli("backup", "list", "--folder", str(tmp_path), env=env)
    assert listed.returncode == 0 and demo_db.name in listed.stdout
    missing = run_cli("backup", "list", "--folder", str(tmp_path / "none"), env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def _major(db) -> int:
    with db.connect() as conn:
        return conn.info.server_version // 10000


def _archived_rows(archive, table: str, major: int) -> int:
    """Rows of ``table`` in an archive, read with pg_restore's own script output."""
    script = subprocess.run([str(client_program("pg_restore", major)), "--data-only",
                             "--file=-", str(archive)], capture_output=True, text=True,
                            check=True).stdout
    block = script.split(f"COPY {table} ", 1)[1].split("\n\\.\n", 1)[0]
    return len(block.splitlines()) - 1  # the COPY line itself


def test_an_archive_of_an_exported_snapshot_misses_what_was_committed_after_it(
        demo_db, tmp_path):
    """Step 1's pg_dump archive shows the moment its CSV files show (pg_dump --snapshot),
    even when the application writes while it is taken."""
    table = QualifiedName("public", "sponsor_chat_messages")
    with demo_db.connect() as held:
        held.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = held.execute("SELECT pg_export_snapshot()").fetchone()[0]
        with demo_db.connect(autocommit=True) as writer:
            writer.execute("DELETE FROM public.sponsor_chat_messages WHERE id <= 50")
        seen = []
        info = backups.dump_archive(
            demo_db.url, [table], tmp_path / "held.dump", server_major=_major(demo_db),
            snapshot=snapshot, meanwhile=lambda: seen.append(held.execute(
                "SELECT count(*) FROM public.sponsor_chat_messages").fetchone()[0]))
        held.rollback()
    major = _major(demo_db)
    backups.dump_archive(demo_db.url, [table], tmp_path / "now.dump", server_major=major)
    assert seen == [200]
    assert _archived_rows(tmp_path / "held.dump", "public.sponsor_chat_messages", major) == 200
    assert _archived_rows(tmp_path / "now.dump", "public.sponsor_chat_messages", major) == 150
    assert info["bytes"] == (tmp_path / "held.dump").stat().st_size


def _pg_dump_sessions(conn) -> int:
    return conn.execute("SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = 'pg_dump'").fetchone()[0]


def test_a_failure_beside_pg_dump_stops_it_and_is_raised(demo_db, tmp_path):
    """pg_dump waits for a table another session holds; the work beside it fails: the
    failure comes back at once, pg_dump is gone, and the other session never let go."""
    with demo_db.connect() as holder, demo_db.connect(autocommit=True) as watcher:
        holder.execute("LOCK TABLE public.sponsor_chat_messages IN ACCESS EXCLUSIVE MODE")
        released = threading.Event()

        def release() -> None:  # only if pg_dump were left waiting: the test then fails
            released.set()
            holder.rollback()

        def fail() -> None:
            for _ in range(200):
                if watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                   "application_name = 'pg_dump' AND wait_event_type = "
                                   "'Lock'").fetchone()[0]:
                    break
                time.sleep(0.05)
            raise RuntimeError("the digest failed")

        timer = threading.Timer(30, release)
        timer.start()
        try:
            with pytest.raises(RuntimeError, match="the digest failed"):
                backups.dump_archive(demo_db.url,
                                     [QualifiedName("public", "sponsor_chat_messages")],
                                     tmp_path / "a.dump", server_major=_major(demo_db),
                                     meanwhile=fail)
            assert not released.is_set(), "pg_dump was waited for instead of stopped"
            for _ in range(100):  # the killed pg_dump's session ends within moments
                if not _pg_dump_sessions(watcher):
                    break
                time.sleep(0.05)
            assert _pg_dump_sessions(watcher) == 0
        finally:
            timer.cancel()
            if not released.is_set():
                holder.rollback()
