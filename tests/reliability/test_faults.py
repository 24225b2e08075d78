"""Faults rehearsed: the notebook's own backend killed at each step of every destructive
notebook (10 reset, 20 drop, 21 recovery, 31 repair), a conflicting lock held by the
application, the export folder filled up or removed mid-export, and two operators at
once. After each, the database is either untouched or completely rolled back to the
migration's absence with a verified export, never in between; the tests assert which,
and that the playbook's message says so.

Kills are real: ``pg_terminate_backend`` from another session, fired by a cursor that
watches the statements the step sends (``instrument.py``), so no product code changes."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import threading

import psycopg
import pytest

from playbook import demo_app
from playbook.db import connecting, localdb
from playbook.db.names import QualifiedName
from playbook.errors import (
    ConnectionFailed,
    ExportFailed,
    ExportMismatch,
    GateClosed,
    LockBusy,
    PlaybookError,
)
from playbook.exports import require_sound_export
from playbook.procedures import drops, recovery, table_diff
from playbook.procedures import table_repair as repair
from playbook.runs import begin_run
from playbook.steps import recover_coaching_tables as steps21
from playbook.steps import rollback_coaching_tables as steps20
from playbook.steps import rollback_sequence as steps10
from reliability.conftest import coaching_tables_present, mounted_tmpfs
from reliability.instrument import InstrumentedRun, Tripwire, instrument, terminator

FAULTS: list[str] = []  # every fault injected, for the summary line


def _executing(db, notebook: str):
    return begin_run(notebook, mode="execute", confirm_database=db.name)


def _kill(pg_cluster, pattern: str, occurrence: int = 1, *, after: bool = False) -> Tripwire:
    FAULTS.append(pattern)
    return Tripwire(pattern, occurrence, terminator(pg_cluster.admin_url), after=after,
                    at_commit=pattern == "COMMIT")


# --- 20: the drop ---------------------------------------------------------------------

DROP_STEPS = [
    ("lock_timeout stated", r"^SELECT set_config\('lock_timeout'", 1, False),
    ("playbook lock taken", r"pg_try_advisory_xact_lock", 1, False),
    ("tables locked against writes", r"^LOCK TABLE", 1, False),
    ("snapshot shared for the final export", r"pg_export_snapshot", 1, False),
    ("final export under the write lock", r"^COPY \(SELECT", 1, False),
    ("protected tables measured", r'FROM "public"\."profiles"', 1, False),
    ("first table dropped", r"^DROP TABLE", 1, False),
    ("between two drops", r"^DROP TABLE", 2, True),
    ("last table dropped", r"^DROP TABLE", 3, True),
    ("functions dropped", r"^DROP FUNCTION", 2, False),
    ("verifying inside the transaction", r"^DROP FUNCTION", 3, True),
    ("just before COMMIT", "COMMIT", 1, False),
]


@pytest.mark.parametrize("step, pattern, occurrence, after", DROP_STEPS,
                         ids=[s[0].replace(" ", "-") for s in DROP_STEPS])
def test_killing_the_drop_at_each_step_leaves_the_database_untouched(
        demo_db, pg_cluster, coaching, coaching_export, step, pattern, occurrence, after):
    before = demo_db.fingerprint()
    tripwire = _kill(pg_cluster, pattern, occurrence, after=after)
    run = InstrumentedRun.wrap(_executing(demo_db, "20_rollback_coaching_tables"), tripwire)
    with pytest.raises(ConnectionFailed, match="nothing it did was kept"):
        steps20.perform_rollback(run, coaching, coaching_export)
    assert tripwire.fired_at, f"the step {step!r} was never reached"
    assert demo_db.fingerprint() == before  # untouched: all three tables, every row
    assert len(coaching_tables_present(demo_db)) == 3
    # Running the step again from the top completes it: the kill left nothing behind
    # that stops it (a final export cut short is cleared), and step 1's export is intact.
    with demo_db.connect() as conn:
        assert drops.perform_drop(conn, coaching, coaching_export).committed
    require_sound_export(coaching_export)
    assert not drops.staging_folder(coaching_export).exists()


# --- 21: the recovery --------------------------------------------------------------------

RECOVERY_STEPS = [
    ("playbook lock taken", r"pg_try_advisory_xact_lock", 1, False),
    ("migration re-applied", r"^-- Coaching tables", 1, True),
    ("foreign keys set aside for the load", r"^ALTER TABLE .* DROP CONSTRAINT", 1, True),
    ("first table re-imported", r'^COPY "public"\."sponsor_visible_memos"', 1, False),
    ("last table re-imported", r'^COPY "public"\."sponsor_chat_messages"', 1, False),
    ("indexes re-created", r"^CREATE INDEX", 3, True),
    ("foreign keys re-validated", r"^ALTER TABLE .* ADD CONSTRAINT", 2, False),
    ("sequences moved past MAX", r"^SELECT setval", 2, True),
    ("proving the values equal", r"^SELECT count\(\*\), coalesce\(sum\(h >> 32\)", 2, False),
    ("just before COMMIT", "COMMIT", 1, False),
]


@pytest.mark.parametrize("step, pattern, occurrence, after", RECOVERY_STEPS,
                         ids=[s[0].replace(" ", "-") for s in RECOVERY_STEPS])
def test_killing_the_recovery_at_each_step_leaves_the_migration_absent_and_the_export_sound(
        demo_db, pg_cluster, coaching, coaching_export, step, pattern, occurrence, after):
    with demo_db.connect() as conn:
        assert drops.perform_drop(conn, coaching, coaching_export).committed
    rolled_back = demo_db.fingerprint()
    tripwire = _kill(pg_cluster, pattern, occurrence, after=after)
    run = InstrumentedRun.wrap(_executing(demo_db, "21_recover_coaching_tables"), tripwire)
    with pytest.raises(ConnectionFailed, match="nothing it did was kept"):
        steps21.recover(run, coaching, coaching_export)
    assert tripwire.fired_at, f"the step {step!r} was never reached"
    assert demo_db.fingerprint() == rolled_back  # completely rolled back: migration absent
    assert not coaching_tables_present(demo_db)
    require_sound_export(coaching_export)  # and the export it needs is still verified
    with demo_db.connect() as conn:
        assert recovery.perform_recovery(conn, coaching, coaching_export).committed


# --- 10: the sequence reset -------------------------------------------------------------

SEQUENCE_STEPS = [
    ("playbook lock taken", r"pg_try_advisory_xact_lock", 1, False),
    ("table locked", r"^LOCK TABLE", 1, True),
    ("sequence reset", r"COALESCE\(MAX", 1, False),
    ("test insert", r"^INSERT INTO", 1, True),
    ("just before COMMIT", "COMMIT", 1, False),
]


def _without_sequences(fingerprint: dict) -> dict:
    return {k: v for k, v in fingerprint.items() if not k.startswith("sequence ")}


@pytest.mark.parametrize("step, pattern, occurrence, after", SEQUENCE_STEPS,
                         ids=[s[0].replace(" ", "-") for s in SEQUENCE_STEPS])
def test_killing_the_sequence_reset_at_each_step_changes_no_row_and_never_moves_back(
        demo_db, pg_cluster, step, pattern, occurrence, after):
    with demo_db.connect() as conn:
        demo_app.break_application(conn, "sequence-behind")
        conn.commit()
    before = demo_db.fingerprint()
    run = _executing(demo_db, "10_rollback_sequence")
    diagnosis = steps10.verify_the_issue(run)
    tripwire = _kill(pg_cluster, pattern, occurrence, after=after)
    with pytest.raises(ConnectionFailed, match="nothing it did was kept"):
        steps10.run_rollback(InstrumentedRun.wrap(run, tripwire), diagnosis)
    assert tripwire.fired_at, f"the step {step!r} was never reached"
    after_kill = demo_db.fingerprint()
    # Rows, defaults and every other object: exactly as before.
    assert _without_sequences(after_kill) == _without_sequences(before)
    # setval/nextval are never rolled back by PostgreSQL: a kill after the reset leaves the
    # sequence reset (only ever forward, never behind where it was); before it, untouched.
    key = f"sequence {diagnosis.sequence}"
    assert after_kill[key][0] >= before[key][0]
    if step in ("playbook lock taken", "table locked", "sequence reset"):
        assert after_kill == before
    again = steps10.run_rollback(run, steps10.verify_the_issue(run))
    assert again.after.healthy


# --- 31: the surgical repair ------------------------------------------------------------


@pytest.fixture
def damaged_with_backup(demo_db, pg_cluster):
    """A backup copy of the demo (the scratch restore) and the demo damaged after it."""
    name = demo_db.name + "_bk"
    url = localdb.create_database(pg_cluster.admin_url, name, template=demo_db.name)
    with demo_db.connect(autocommit=True) as conn:
        conn.execute("DELETE FROM public.journal_entries WHERE id % 10 = 3")
        conn.execute("UPDATE public.virtues SET description = 'CORRUPTED' WHERE id % 3 = 0")
    yield url
    localdb.drop_database(pg_cluster.admin_url, name)


REPAIRED = [QualifiedName("public", "journal_entries"), QualifiedName("public", "virtues")]


def _repair_plan(scratch, live):
    report = table_diff.diff_tables(scratch, live, REPAIRED, None)
    return repair.plan_repair(live, report, {}, ())


@pytest.mark.parametrize("step", ["session prepared", "locked", "staged", "written",
                                  "verified"])
def test_killing_the_repair_at_each_step_leaves_live_as_it_was(
        demo_db, damaged_with_backup, pg_cluster, step):
    before = demo_db.fingerprint()
    FAULTS.append(f"repair:{step}")
    kill = terminator(pg_cluster.admin_url)
    with psycopg.connect(damaged_with_backup) as scratch, \
            connecting.connect(url=demo_db.url, purpose="31_restore_tables") as live:
        plan = _repair_plan(scratch, live)
        if step == "session prepared":  # before the transaction: its session settings
            tripwire = Tripwire(r"^SELECT set_config", 1, kill)
            instrument(live, tripwire)
            on_step = None
        else:
            def on_step(name: str) -> None:
                if name == step:
                    kill(live)
        with pytest.raises(ConnectionFailed):
            repair.execute_repair(scratch, live, plan, on_step=on_step)
    assert demo_db.fingerprint() == before


# --- conflicting locks held by the application --------------------------------------------


def test_recovery_gives_up_within_lock_timeout_while_the_application_writes_profiles(
        demo_db, coaching, coaching_export):
    with demo_db.connect() as conn:
        assert drops.perform_drop(conn, coaching, coaching_export).committed
    rolled_back = demo_db.fingerprint()
    FAULTS.append("conflicting lock: uncommitted profile insert during recovery")
    with demo_db.connect() as app:
        # An application transaction creating a user, not yet committed: the migration's
        # foreign keys to profiles cannot be created until it ends.
        app.execute("UPDATE public.profiles SET full_name = full_name "
                    "WHERE id = (SELECT id FROM public.profiles LIMIT 1)")
        run = _executing(demo_db, "21_recover_coaching_tables")
        with pytest.raises(LockBusy, match="rolled back; nothing was changed"):
            steps21.recover(run, coaching, coaching_export, lock_timeout="300ms")
        app.rollback()
    assert demo_db.fingerprint() == rolled_back
    require_sound_export(coaching_export)


def test_repair_gives_up_within_lock_timeout_while_the_application_holds_a_row(
        demo_db, damaged_with_backup):
    before = demo_db.fingerprint()
    FAULTS.append("conflicting lock: open journal update during repair")
    with demo_db.connect() as app, psycopg.connect(damaged_with_backup) as scratch, \
            connecting.connect(url=demo_db.url, purpose="31_restore_tables",
                               limits=connecting.SessionLimits(lock_timeout="300ms")) as live:
        app.execute("UPDATE public.journal_entries SET title = title WHERE id = 1")
        plan = _repair_plan(scratch, live)
        with pytest.raises(LockBusy):
            repair.execute_repair(scratch, live, plan)
        app.rollback()
    assert demo_db.fingerprint() == before


# --- the export folder fills up or disappears mid-export -----------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """Somewhere the demo's coaching export (about 40 kB) cannot fit, and the error the
    operating system gives. As root: a 16 kB tmpfs, a real full disk (ENOSPC). An ordinary
    user may not mount, so there this process's file-size limit (RLIMIT_FSIZE) is set to
    16 kB for the test: a write past it fails with EFBIG, the same path through the code."""
    if os.geteuid() == 0:
        with mounted_tmpfs(tmp_path / "tiny-disk", "16k") as mount:
            yield mount, "No space left on device"
        return
    folder = tmp_path / "size-limited"
    folder.mkdir()
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
    try:
        yield folder, "File too large"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


def test_a_disk_full_mid_export_leaves_no_export_the_drop_accepts(demo_db, coaching,
                                                                  tiny_disk):
    before = demo_db.fingerprint()
    FAULTS.append("disk full mid-export")
    run = _executing(demo_db, "20_rollback_coaching_tables")
    disk, os_error = tiny_disk
    folder = disk / "exports"
    # One playbook error saying what happened, that nothing changed and what to do; never
    # a raw OSError, nor the cleanup's "can't change 'isolation_level' now" hiding it.
    with pytest.raises(ExportFailed, match=os_error) as failed:
        steps20.export_data(run, coaching, folder, show_progress=False)
    assert "nothing was dropped or changed" in str(failed.value)
    assert "free space" in str(failed.value)
    with pytest.raises(ExportMismatch, match="Nothing was changed"):
        steps20.perform_rollback(run, coaching, folder)
    gate = steps20.gate(run, coaching, folder)
    assert demo_db.fingerprint() == before
    assert len(coaching_tables_present(demo_db)) == 3
    assert gate.failing()  # the STOP gate stays closed whatever was answered


def test_an_export_folder_removed_mid_export_is_caught_before_the_drop(
        demo_db, coaching, tmp_path):
    before = demo_db.fingerprint()
    FAULTS.append("export folder removed mid-export")
    folder = tmp_path / "exports"
    tripwire = Tripwire(r"^COPY \(SELECT \* FROM", 1,
                        lambda _conn: shutil.rmtree(folder))
    run = InstrumentedRun.wrap(_executing(demo_db, "20_rollback_coaching_tables"), tripwire)
    run.answers = {qid: "yes" for qid in steps20.GATE_QUESTIONS}
    try:
        steps20.export_data(run, coaching, folder, show_progress=False)
    except (OSError, PlaybookError):
        pass  # failing loudly is fine; what matters is what the drop does next
    assert tripwire.fired_at
    gate = steps20.gate(run, coaching, folder)
    with demo_db.connect() as conn:
        problems = drops.export_problems(conn, coaching, folder)
    if problems:  # a file (or the manifest) went with the folder: the drop refuses
        if (folder / "manifest.json").exists():  # the gate verifies only a manifest it sees
            with pytest.raises(GateClosed, match="data_exported"):
                gate.check()
        # Refused either by the run's gate (its export check fails) or by the drop itself.
        with pytest.raises((GateClosed, ExportMismatch)):
            steps20.perform_rollback(run, coaching, folder)
        assert demo_db.fingerprint() == before
    else:  # the folder went before any file was written: the export is whole and verified
        require_sound_export(folder)
        gate.check()
        assert steps20.perform_rollback(run, coaching, folder) is not None
        assert not coaching_tables_present(demo_db)


# --- two operators at once -------------------------------------------------------------------


def _race(*jobs) -> list[object]:
    """Run the jobs in threads released at the same instant; each result or exception."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def worker(index: int, job) -> None:
        barrier.wait()
        try:
            results[index] = job()
        except Exception as exc:  # noqa: BLE001 - collected and asserted on below
            results[index] = exc

    threads = [threading.Thread(target=worker, args=(i, j)) for i, j in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def _slow_after_lock(seconds: float) -> Tripwire:
    import time

    return Tripwire(r"pg_try_advisory_xact_lock", 1, lambda _c: time.sleep(seconds),
                    after=True)


def test_two_operators_dropping_at_once_one_commits_the_other_is_refused(
        demo_db, coaching, coaching_export):
    FAULTS.append("two operators: drop + drop")
    run = _executing(demo_db, "20_rollback_coaching_tables")
    first = InstrumentedRun.wrap(run, _slow_after_lock(0.5))
    second = InstrumentedRun.wrap(run, _slow_after_lock(0.5))
    outcomes = _race(lambda: steps20.perform_rollback(first, coaching, coaching_export),
                     lambda: steps20.perform_rollback(second, coaching, coaching_export))
    refused = [o for o in outcomes if isinstance(o, PlaybookError)]
    done = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(done) == 1 and len(refused) == 1, outcomes
    assert isinstance(refused[0], LockBusy) and "playbook:20_rollback" in str(refused[0])
    assert not coaching_tables_present(demo_db)  # rolled back once, completely


def test_a_recovery_started_while_the_drop_runs_is_refused_and_the_drop_completes(
        demo_db, coaching, coaching_export):
    FAULTS.append("two operators: drop + recovery")
    before_protected = {k: v for k, v in demo_db.fingerprint().items()
                        if "sponsor" not in k}
    dropping = InstrumentedRun.wrap(_executing(demo_db, "20_rollback_coaching_tables"),
                                    _slow_after_lock(1.0))
    recovering = _executing(demo_db, "21_recover_coaching_tables")

    def recover_a_moment_later():
        import time

        time.sleep(0.3)
        return steps21.recover(recovering, coaching, coaching_export)

    outcomes = _race(lambda: steps20.perform_rollback(dropping, coaching, coaching_export),
                     recover_a_moment_later)
    assert not isinstance(outcomes[0], Exception), outcomes[0]
    assert isinstance(outcomes[1], LockBusy), outcomes[1]
    after = demo_db.fingerprint()
    assert not coaching_tables_present(demo_db)
    assert {k: v for k, v in after.items() if "sponsor" not in k} == before_protected


def test_two_operators_resetting_the_sequence_at_once_reset_it_once(demo_db):
    FAULTS.append("two operators: sequence + sequence")
    with demo_db.connect() as conn:
        demo_app.break_application(conn, "sequence-behind")
        conn.commit()
    run = _executing(demo_db, "10_rollback_sequence")
    diagnosis = steps10.verify_the_issue(run)
    outcomes = _race(
        lambda: steps10.run_rollback(InstrumentedRun.wrap(run, _slow_after_lock(0.5)),
                                       diagnosis),
        lambda: steps10.run_rollback(InstrumentedRun.wrap(run, _slow_after_lock(0.5)),
                                       diagnosis))
    assert sum(isinstance(o, LockBusy) for o in outcomes) == 1, outcomes
    assert steps10.verify_the_issue(run).healthy
