"""A run killed during the drop leaves its session behind on the server (an orphaned
backend, idle in transaction): it keeps the playbook's lock and its ACCESS EXCLUSIVE
table lock. The rerun must say who (pid, application_name, state and age), what it holds
and how to end it; the playbook ends it only when asked by pid, and only its own."""

from __future__ import annotations

import os
import time

import psycopg
import pytest

from helpers import run_cli
from playbook.db.locks import end_stale_backend, take_playbook_lock
from playbook.errors import LockBusy, PreconditionFailed
from playbook.procedures import drops
from playbook.runs import begin_run
from playbook.steps import rollback_coaching_tables as steps20

DROP = "20_rollback_coaching_tables"
ORPHAN_NAME = "playbook:20_rollback_coaching_tables:drop"


def _still_connected(db, pid: int) -> bool:
    return db.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)) == 1


@pytest.mark.both_versions
def test_an_orphaned_drop_session_is_named_and_ended_only_when_asked(
        demo_db, coaching, coaching_export):
    before = demo_db.fingerprint()
    # The killed run's session, exactly as the playbook names it, mid-drop.
    orphan = demo_db.connect(application_name=ORPHAN_NAME)
    take_playbook_lock(orphan, drops.lock_scope(coaching))
    orphan.execute("LOCK TABLE public.sponsor_chat_messages IN ACCESS EXCLUSIVE MODE")
    pid = orphan.info.backend_pid
    time.sleep(1.2)

    # The rerun, in execute mode: refused at the playbook's lock, the orphan named.
    run = begin_run(DROP, mode="execute", confirm_database=demo_db.name)
    with pytest.raises(LockBusy) as refused:
        steps20.perform_rollback(run, coaching, coaching_export)
    text = str(refused.value)
    assert f"pid {pid} ({ORPHAN_NAME}" in text, text
    assert "idle in transaction for" in text
    assert f"SELECT pg_terminate_backend({pid})" in text
    assert f"playbook locks --end {pid}" in text

    # Reading the migration's tables waits on the table lock: that names it too, with
    # the lock it holds, instead of a bare LockNotAvailable.
    with pytest.raises(LockBusy) as waited:
        steps20.review_what_will_be_deleted(begin_run(DROP), coaching)
    text = str(waited.value)
    assert "lock_timeout" in text and f"pid {pid} ({ORPHAN_NAME}" in text, text
    assert "AccessExclusiveLock on sponsor_chat_messages" in text \
        or "AccessExclusiveLock on public.sponsor_chat_messages" in text
    assert f"pg_terminate_backend({pid})" in text

    # The playbook never ends the application's sessions, nor an unknown pid.
    with demo_db.connect(application_name="sponsor-app") as app, \
            demo_db.connect(autocommit=True) as admin:
        with pytest.raises(PreconditionFailed, match="not one of the playbook's sessions"):
            end_stale_backend(admin, app.info.backend_pid)
        assert _still_connected(demo_db, app.info.backend_pid)
        with pytest.raises(PreconditionFailed, match="No session with pid"):
            end_stale_backend(admin, 999_999)
    assert _still_connected(demo_db, pid)

    # Asked knowingly, by pid: the orphan goes, its transaction rolled back.
    env = {**os.environ, "DATABASE_URL": demo_db.url}
    ended = run_cli("locks", "--end", str(pid), env=env)
    assert ended.returncode == 0, ended.stderr
    assert f"ended pid {pid} ({ORPHAN_NAME}" in ended.stdout
    assert not _still_connected(demo_db, pid)
    with pytest.raises(psycopg.OperationalError):
        orphan.execute("SELECT 1")
    orphan.close()
    assert demo_db.fingerprint() == before  # nothing the orphan held was kept

    # And the rerun goes through.
    assert "committed" in set(steps20.perform_rollback(run, coaching, coaching_export)["check"])
    assert demo_db.scalar("SELECT to_regclass('public.sponsor_chat_messages') IS NULL")


def test_playbook_locks_lists_holders_and_refuses_to_end_the_applications(demo_db):
    with demo_db.connect(application_name="sponsor-app") as app:
        app.execute("LOCK TABLE public.profiles IN SHARE MODE")
        env = {**os.environ, "DATABASE_URL": demo_db.url}
        listed = run_cli("locks", env=env)
        assert listed.returncode == 0, listed.stderr
        assert f"pid {app.info.backend_pid} (sponsor-app" in listed.stdout
        assert "ShareLock on profiles" in listed.stdout \
            or "ShareLock on public.profiles" in listed.stdout
        refused = run_cli("locks", "--end", str(app.info.backend_pid), env=env)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "not one of the playbook's sessions" in refused.stderr
        assert demo_db.url not in refused.stdout + refused.stderr
        assert _still_connected(demo_db, app.info.backend_pid)
        app.rollback()
