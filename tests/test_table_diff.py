"""The streamed diff: deleted, changed and added rows by primary key, exported with a
manifest; a table without a key compared whole."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from playbook.db.names import QualifiedName
from playbook.errors import ConfigurationError, ObjectNotFound
from playbook.exports import require_sound_export
from playbook.procedures import diff_blocks, table_diff
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


# --- the block merge (one integer key, hashed on each server) -----------------------------

class _Keys(table_diff.KeySink):
    def __init__(self) -> None:
        self.keys: list = []

    def write(self, keys) -> None:
        self.keys += keys


@pytest.mark.parametrize("key_type", ["int4", "int8", "int2"])
@pytest.mark.parametrize("block_rows", [1, 7, 65_536])
def test_the_block_merge_finds_every_row_at_block_edges_and_table_ends(
        demo_db, backup_copy, monkeypatch, key_type, block_rows):
    monkeypatch.setattr(diff_blocks, "BLOCK_ROWS", block_rows)
    ddl = (f"CREATE TABLE public.items (id {key_type} PRIMARY KEY, label text, "
           "seen timestamptz)")
    for url in (backup_copy, demo_db.url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ddl)
            conn.execute("INSERT INTO public.items SELECT g * 2, 'item ' || g, "
                         "'2026-01-01'::timestamptz + g * interval '1 hour' "
                         "FROM generate_series(1, 100) g")
    with psycopg.connect(demo_db.url, autocommit=True) as live:
        # Deleted: the first key, the last, a run in the middle; changed: neighbours of
        # those; added: below the first key, in a gap, after the last.
        live.execute("DELETE FROM public.items WHERE id IN (2, 200) OR id BETWEEN 40 AND 50")
        live.execute("UPDATE public.items SET label = 'x' WHERE id IN (4, 52, 198)")
        live.execute("UPDATE public.items SET seen = NULL WHERE id = 100")
        live.execute("INSERT INTO public.items VALUES (1, 'new', NULL), (41, 'new', NULL), "
                      "(201, 'new', NULL), (300, 'new', now())")
    table = QualifiedName("public", "items")
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        shape = table_diff.table_shape(scratch, live, table)
        assert diff_blocks.applies(scratch, live, shape)
        sinks = {kind: [_Keys()] for kind in (table_diff.DELETED, table_diff.CHANGED,
                                              table_diff.ADDED)}
        diff = table_diff.compare_table(scratch, live, shape, sinks)
    found = {kind: [k[0] for k in s[0].keys] for kind, s in sinks.items()}
    assert found[table_diff.DELETED] == [2, 40, 42, 44, 46, 48, 50, 200]
    assert found[table_diff.CHANGED] == [4, 52, 100, 198]
    assert found[table_diff.ADDED] == [1, 41, 201, 300]
    assert (diff.backup_rows, diff.live_rows) == (100, 96)
    assert diff.unchanged == 100 - 8 - 4


def test_a_table_with_a_json_column_is_diffed_row_by_row(demo_db, backup_copy):
    for url in (backup_copy, demo_db.url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.docs (id bigint PRIMARY KEY, body json)")
            conn.execute("INSERT INTO public.docs SELECT g, json_build_object('n', g) "
                         "FROM generate_series(1, 20) g")
    with psycopg.connect(demo_db.url, autocommit=True) as live:
        live.execute("UPDATE public.docs SET body = '{\"n\": 0}' WHERE id = 3")
        live.execute("DELETE FROM public.docs WHERE id = 20")
    table = QualifiedName("public", "docs")
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        shape = table_diff.table_shape(scratch, live, table)
        assert not diff_blocks.applies(scratch, live, shape)  # json has no hash function
        diff = table_diff.compare_table(scratch, live, shape)
    assert (diff.changed, diff.deleted, diff.added) == (1, 1, 0)


@pytest.mark.parametrize("keys", ["dense", "sparse", "sparse then dense"])
@pytest.mark.parametrize("page_order", ["as the server sends it", "reversed"])
def test_key_ranges_and_keyset_pages_merge_right_whatever_order_rows_arrive_in(
        demo_db, backup_copy, monkeypatch, keys, page_order):
    """Dense keys are read as key ranges, keys too sparse for that by keyset pages; a page
    whose rows arrive out of key order (a plan PostgreSQL is free to choose) must still
    merge right."""
    monkeypatch.setattr(diff_blocks, "BLOCK_ROWS", 16)
    if page_order == "reversed":
        for name, order in (("range_query", "id DESC"), ("page_query", "k DESC")):
            original = getattr(diff_blocks, name)

            def reversed_pages(shape, original=original, order=order):
                text = original(shape).as_string(None)
                assert "''::bytea)" in text
                return sql.SQL(text.replace("''::bytea)", f"''::bytea ORDER BY {order})"))

            monkeypatch.setattr(diff_blocks, name, reversed_pages)
    ids = {"dense": list(range(1, 301)),
           "sparse": [g * 1_000_003 for g in range(-150, 150)],
           "sparse then dense": [g * 1_000_003 for g in range(-100, 0)] + list(range(1, 201))}[keys]
    gap = ids.pop(150)  # a key only live will have
    for url in (backup_copy, demo_db.url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.items (id int8 PRIMARY KEY, label text)")
            conn.execute("INSERT INTO public.items SELECT g, 'item ' || g "
                         "FROM unnest(%s::int8[]) g", (ids,))
    deleted, changed = ids[::37], ids[5::41]
    added = [min(ids) - 7, max(ids) + 7, gap]
    with psycopg.connect(demo_db.url, autocommit=True) as live:
        live.execute("DELETE FROM public.items WHERE id = ANY(%s)", (deleted,))
        live.execute("UPDATE public.items SET label = 'x' WHERE id = ANY(%s)", (changed,))
        live.execute("INSERT INTO public.items SELECT g, 'new' FROM unnest(%s::int8[]) g",
                     (added,))
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        shape = table_diff.table_shape(scratch, live, QualifiedName("public", "items"))
        sinks = {kind: [_Keys()] for kind in (table_diff.DELETED, table_diff.CHANGED,
                                              table_diff.ADDED)}
        diff = table_diff.compare_table(scratch, live, shape, sinks)
    found = {kind: [k[0] for k in s[0].keys] for kind, s in sinks.items()}
    assert found == {table_diff.DELETED: sorted(deleted),
                     table_diff.CHANGED: sorted(set(changed) - set(deleted)),
                     table_diff.ADDED: sorted(added)}
    assert (diff.backup_rows, diff.live_rows) == (len(ids), len(ids) - len(deleted) + 3)


# --- handing the differing keys to the sinks ---------------------------------------------


class _Recording(table_diff.KeySink):
    """A sink on one session that records its batches; ``waits_for``: it does not write
    until that event is set (a sink fed one after the other would wait in vain)."""

    def __init__(self, session, waits_for=None, announces=None, fails=False) -> None:
        self.sessions = (session,)
        self.batches: list[list[tuple]] = []
        self.waits_for, self.announces, self.fails = waits_for, announces, fails

    def write(self, keys: list[tuple]) -> None:
        if self.announces is not None:
            self.announces.set()
        if self.waits_for is not None and not self.waits_for.wait(10):
            raise AssertionError("the other session's sink was not fed at the same time")
        if self.fails:
            raise RuntimeError("the backup's server went away")
        self.batches.append(keys)


def test_sinks_of_the_two_sessions_are_fed_side_by_side_each_in_key_order():
    import threading

    import numpy as np

    scratch, live = object(), object()
    started = threading.Event()
    backup_side = _Recording(scratch, waits_for=started)
    live_side = _Recording(live, announces=started)
    keys = {table_diff.DELETED: np.arange(1, 12, dtype=np.int64),
            table_diff.CHANGED: np.empty(0, np.int64),
            table_diff.ADDED: np.arange(100, 105, dtype=np.int64)}
    table_diff.deliver({table_diff.DELETED: [backup_side], table_diff.ADDED: [live_side]},
                       keys, batch=4)
    assert backup_side.batches == [[(1,), (2,), (3,), (4,)], [(5,), (6,), (7,), (8,)],
                                   [(9,), (10,), (11,)]]
    assert live_side.batches == [[(100,), (101,), (102,), (103,)], [(104,)]]


def test_a_sink_that_fails_on_one_session_is_raised_after_the_other_finished():
    import numpy as np

    failing, other = _Recording(object(), fails=True), _Recording(object())
    keys = {table_diff.DELETED: np.arange(1, 4, dtype=np.int64),
            table_diff.ADDED: np.arange(7, 9, dtype=np.int64)}
    with pytest.raises(RuntimeError, match="went away"):
        table_diff.deliver({table_diff.DELETED: [failing], table_diff.ADDED: [other]},
                           keys, batch=10)
    assert other.batches == [[(7,), (8,)]]
