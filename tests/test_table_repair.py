"""The repair transaction: strategies, refusals, and a killed connection."""

from __future__ import annotations

import psycopg
import pytest

from playbook.db.names import QualifiedName
from playbook.errors import ConnectionFailed, PreconditionFailed, VerificationFailed
from playbook.procedures import table_diff
from playbook.procedures import table_repair as repair
from restore_tables_helpers import DAMAGED, damage, rows_by_id


def _plan(scratch, live, strategy=None, allowed=()):
    tables = [QualifiedName(*t.split(".")) for t in DAMAGED]
    report = table_diff.diff_tables(scratch, live, tables, None)
    return repair.plan_repair(live, report, strategy or {}, allowed)


def test_missing_brings_back_deleted_rows_and_leaves_changed_ones(demo_db, backup_copy):
    damage(demo_db.url)
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        plan = _plan(scratch, live, {t: "missing" for t in DAMAGED})
        result = repair.execute_repair(scratch, live, plan)
    assert all(c.passed for c in result.checks)
    assert demo_db.scalar("SELECT count(*) FROM public.virtues WHERE description = 'CORRUPTED'"
                          ) == 4


def test_replace_is_refused_while_rows_were_added_since_the_backup(demo_db, backup_copy):
    damage(demo_db.url)
    fingerprint = demo_db.fingerprint()
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        plan = _plan(scratch, live, {"public.journal_entries": "replace"})
        with pytest.raises(PreconditionFailed, match="added since the backup"):
            repair.execute_repair(scratch, live, plan)
    assert demo_db.fingerprint() == fingerprint


def test_replace_when_named_makes_the_table_equal_to_the_backup(demo_db, backup_copy):
    before = rows_by_id(demo_db.url, "public.journal_entries")
    damage(demo_db.url)
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        plan = _plan(scratch, live, {"public.journal_entries": "replace"},
                     ["public.journal_entries"])
        result = repair.execute_repair(scratch, live, plan)
    assert all(c.passed for c in result.checks)
    assert rows_by_id(demo_db.url, "public.journal_entries") == before


def test_a_killed_connection_mid_repair_leaves_live_as_it_was(demo_db, backup_copy):
    damage(demo_db.url)
    tables = {t: rows_by_id(demo_db.url, t) for t in DAMAGED}

    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        pid = live.info.backend_pid

        def kill_after_writing(step: str) -> None:
            if step == "written":
                with demo_db.connect(autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        plan = _plan(scratch, live)
        with pytest.raises(ConnectionFailed):
            repair.execute_repair(scratch, live, plan, on_step=kill_after_writing)
    assert {t: rows_by_id(demo_db.url, t) for t in DAMAGED} == tables


def test_unknown_strategy_and_unchosen_table_are_refused(demo_db, backup_copy):
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        with pytest.raises(Exception, match="use one of"):
            _plan(scratch, live, {"public.virtues": "everything"})
        with pytest.raises(Exception, match="not among the chosen"):
            _plan(scratch, live, {"public.profiles": "missing"})


def test_a_cascade_into_a_table_not_chosen_rolls_the_repair_back(demo_db, backup_copy):
    """replace deletes the rows added since the backup; a foreign key ON DELETE CASCADE
    from a table that was not chosen would delete its rows too: caught before COMMIT."""
    damage(demo_db.url)
    with psycopg.connect(demo_db.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.entry_likes (id int PRIMARY KEY, entry_id bigint "
                     "REFERENCES public.journal_entries (id) ON DELETE CASCADE)")
        conn.execute("INSERT INTO public.entry_likes SELECT 1, max(id) "
                      "FROM public.journal_entries")
    fingerprint = demo_db.fingerprint()
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        plan = _plan(scratch, live, {"public.journal_entries": "replace"},
                     ["public.journal_entries"])
        with pytest.raises(VerificationFailed, match=r"public.entry_likes unchanged.*"
                           r"1 deleted"):
            repair.execute_repair(scratch, live, plan)
    assert demo_db.fingerprint() == fingerprint


def test_the_application_writing_to_a_table_not_chosen_does_not_fail_the_repair(
        demo_db, backup_copy):
    damage(demo_db.url)
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live, \
            demo_db.connect(autocommit=True) as app:
        plan = _plan(scratch, live)

        def write_a_profile(step: str) -> None:
            if step == "staged":  # between the two looks at the other tables
                app.execute("UPDATE public.profiles SET full_name = 'written meanwhile' "
                            "WHERE id = (SELECT id FROM public.profiles LIMIT 1)")

        result = repair.execute_repair(scratch, live, plan, on_step=write_a_profile)
    assert result.committed and all(c.passed for c in result.checks)
    assert demo_db.scalar("SELECT count(*) FROM public.profiles "
                          "WHERE full_name = 'written meanwhile'") == 1
