"""The streamed diff: deleted, changed and added rows by primary key, exported with a
manifest; a table without a key compared whole."""

from __future__ import annotations

import psycopg
import pytest

from playbook.db.names import QualifiedName
from playbook.errors import ConfigurationError, ObjectNotFound
from playbook.exports import require_sound_export
from playbook.procedures import table_diff
from restore_tables_helpers import damage


def test_diff_finds_exactly_the_damage_and_exports_it(demo_db, backup_copy, tmp_path):
    new_rows = damage(demo_db.url)
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        tables = table_diff.chosen_tables(scratch, [], ["public"])
        report = table_diff.diff_tables(scratch, live, tables, tmp_path)
        deleted = live.execute("SELECT count(*) FROM public.journal_entries").fetchone()
    by = report.by_table()
    journal = by["public.journal_entries"]
    assert journal.deleted == journal.backup_rows - (deleted[0] - 5)
    assert journal.added == len(new_rows["public.journal_entries"]) and journal.changed == 0
    assert by["public.virtues"].changed == 4 and by["public.virtues"].deleted == 0
    assert by["public.sponsor_visible_memos"].deleted == by["public.sponsor_visible_memos"
                                                            ].backup_rows
    assert by["public.profiles"].equal
    manifest = require_sound_export(tmp_path)
    files = {f.file: f.rows for f in manifest.files}
    assert files["public.journal_entries.deleted_since_backup.csv"] == journal.deleted
    assert files["public.virtues.changed.backup_values.csv"] == 4


def test_small_batches_give_the_same_diff(demo_db, backup_copy):
    damage(demo_db.url)
    table = QualifiedName("public", "journal_entries")
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        shape = table_diff.table_shape(scratch, live, table)
        whole = table_diff.compare_table(scratch, live, shape)
        tiny = table_diff.compare_table(scratch, live, shape, batch=3)
    assert (whole.deleted, whole.added, whole.added_digest) == (tiny.deleted, tiny.added,
                                                                tiny.added_digest)


def test_table_without_primary_key_gets_a_whole_table_comparison(demo_db, backup_copy):
    for url in (demo_db.url, backup_copy):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.audit_log AS "
                         "SELECT g AS n FROM generate_series(1, 5) g")
    with demo_db.connect(autocommit=True) as conn:
        conn.execute("DELETE FROM public.audit_log WHERE n = 2")
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        report = table_diff.diff_tables(scratch, live, [QualifiedName("public", "audit_log")],
                                        None)
    row = report.table().iloc[0]
    assert row["compared by"] == "whole table" and row["result"] == "differs"
    assert "no primary key" in row["notes"]


@pytest.mark.parametrize("name", ["x; DROP TABLE public.virtues", "fo'o", 'ba"r.'])
def test_injection_strings_as_table_names_are_refused(demo_db, backup_copy, name):
    with psycopg.connect(backup_copy) as scratch:
        with pytest.raises(ConfigurationError):
            table_diff.chosen_tables(scratch, [name], ["public"])


def test_backup_of_another_database_has_no_such_tables(demo_db, empty_db):
    with psycopg.connect(empty_db.url) as scratch, demo_db.connect() as live:
        with pytest.raises(ObjectNotFound, match="not in the restored backup"):
            table_diff.diff_tables(scratch, live, [QualifiedName("public", "virtues")], None)
        with pytest.raises(ObjectNotFound, match="no tables"):
            table_diff.chosen_tables(scratch, [], ["public"])
