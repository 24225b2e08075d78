"""Rehearsed: the export of notebook 20 is cut short (issue 16, item 5, the export half).
The operator presses Ctrl-C (a real SIGINT to this process, raised as KeyboardInterrupt
by Python), or the run is killed with ``kill -9`` (a real export in a child process).
The folder then holds files but is not an export: it stays marked INCOMPLETE, the drop
and notebook 21's recovery refuse it with a message saying so and what to do, and the
database is left exactly as it was.

To be caught mid-way the export must take a moment: the chat messages are first grown
to some 300,000 rows (about 80 MB of CSV)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from playbook.errors import ExportMismatch
from playbook.procedures import drops, recovery
from playbook.runs import begin_run
from playbook.steps import rollback_coaching_tables as steps20
from reliability.conftest import coaching_tables_present

ROOT = Path(__file__).resolve().parents[2]
MESSAGES_CSV = "public.sponsor_chat_messages.csv"


def _grow_messages(db, copies: int = 1500) -> None:
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO public.sponsor_chat_messages (connection_id, sender_id, body) "
            "SELECT connection_id, sender_id, body || ' ' || repeat('x', 200) || g "
            "FROM public.sponsor_chat_messages, generate_series(1, %s) g", (copies,))
        conn.commit()


def _mid_export(folder: Path) -> bool:
    """The messages' CSV is being written and no manifest exists yet."""
    path = folder / MESSAGES_CSV
    try:
        return path.stat().st_size > (4 << 20) and not (folder / "manifest.json").exists()
    except FileNotFoundError:
        return False


def _wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the export never reached the point to cut"
        time.sleep(0.002)


def _refused_everywhere(db, coaching, folder: Path) -> None:
    """The drop, notebook 21's export check and its recovery all refuse ``folder`` in
    words that say it is incomplete, and the database is unchanged by any of them."""
    before = db.fingerprint()
    present = coaching_tables_present(db)
    with pytest.raises(ExportMismatch, match="INCOMPLETE") as refused:
        recovery.check_export(coaching, folder)
    assert "export again" in str(refused.value) or "run notebook 20's export again" in str(
        refused.value)
    with pytest.raises(ExportMismatch, match="INCOMPLETE"):
        with db.connect() as conn:
            drops.perform_drop(conn, coaching, folder)
    assert coaching_tables_present(db) == present
    # Recovery proper, after a rollback made without this export: still refused.
    with db.connect() as conn:
        assert drops.perform_drop(conn, coaching, folder, require_export=False).committed
    dropped = db.fingerprint()
    with pytest.raises(ExportMismatch, match="INCOMPLETE"):
        with db.connect() as conn:
            recovery.perform_recovery(conn, coaching, folder)
    assert db.fingerprint() == dropped and coaching_tables_present(db) == set()
    assert before != dropped  # (the rollback above did change it: the check can fail)


@pytest.mark.both_versions
def test_ctrl_c_mid_export_leaves_a_folder_marked_incomplete_that_21_refuses(
        demo_db, coaching, incidents, ctrl_c_raises):
    _grow_messages(demo_db)
    folder = drops.default_export_dir(coaching, "ctrl-c")
    run = begin_run("20_rollback_coaching_tables")

    def press_ctrl_c() -> None:
        _wait_until(lambda: _mid_export(folder))
        os.kill(os.getpid(), signal.SIGINT)  # Python raises KeyboardInterrupt in this thread

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    with pytest.raises(KeyboardInterrupt):
        steps20.export_data(run, coaching, folder, show_progress=False)
    presser.join(10)
    assert (folder / MESSAGES_CSV).exists() and (folder / "INCOMPLETE").exists()
    assert not (folder / "manifest.json").exists()
    # 21 without export_dir takes the newest export of the migration: this one, refused,
    # not an older complete one in its place.
    older = drops.default_export_dir(coaching, "an-older-incident")
    older.mkdir(parents=True)
    (older / "manifest.json").write_text("{}")
    os.utime(older / "manifest.json", (time.time() - 3600,) * 2)
    assert recovery.find_export(coaching) == folder
    _refused_everywhere(demo_db, coaching, folder)


_EXPORT_IN_A_CHILD = """
import sys
from pathlib import Path
from playbook.changesets.migration import load_migration
from playbook.runs import begin_run
from playbook.steps import rollback_coaching_tables as steps20
steps20.export_data(begin_run("20_rollback_coaching_tables"),
                    load_migration("coaching_tables"), Path(sys.argv[1]),
                    show_progress=False)
"""


@pytest.mark.both_versions
@pytest.mark.parametrize("moment", ["writing the CSV files", "writing the pg_dump archive"])
def test_kill_9_mid_export_leaves_a_folder_marked_incomplete_that_21_refuses(
        demo_db, coaching, tmp_path, moment):
    _grow_messages(demo_db)
    folder = tmp_path / "export"
    child = subprocess.Popen([sys.executable, "-c", _EXPORT_IN_A_CHILD, str(folder)],
                             cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    try:
        if moment == "writing the CSV files":
            _wait_until(lambda: _mid_export(folder))
        else:  # the CSV files and their manifest are written; pg_dump has started
            _wait_until(lambda: (folder / "manifest.json").exists()
                        and (folder / "coaching_tables.dump").exists())
        child.kill()  # SIGKILL: no handler, no cleanup
    finally:
        output = child.communicate(timeout=60)[0].decode(errors="replace")
    assert child.returncode == -signal.SIGKILL, output
    assert (folder / "INCOMPLETE").exists()
    _refused_everywhere(demo_db, coaching, folder)
