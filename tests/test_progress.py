"""An on-call engineer watching a long step must see it move: rows and megabytes, read from
what really happened (the diff's merged rows, the server's own COPY counters), never a
guess that could show a finished bar over a stalled load."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from playbook import progress
from playbook.db.names import QualifiedName
from playbook.procedures import diff_blocks, table_diff


def _items(urls: list[str], key_type: str) -> None:
    for url in urls:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE public.items (id {key_type} PRIMARY KEY, label text, "
                         "payload json)")
            conn.execute("INSERT INTO public.items SELECT g, 'item ' || g, NULL "
                         "FROM generate_series(1, 120000) g")


@pytest.mark.parametrize("fast_path", [True, False])
def test_the_diff_ticks_add_up_to_the_backup_rows_it_merged(demo_db, backup_copy, fast_path,
                                                            monkeypatch):
    monkeypatch.setattr(diff_blocks, "BLOCK_ROWS", 10_000)
    monkeypatch.setattr(table_diff, "TICK_ROWS", 7_000)
    _items([backup_copy, demo_db.url], "int8")
    with psycopg.connect(demo_db.url, autocommit=True) as live:
        live.execute("DELETE FROM public.items WHERE id % 100 = 0")
        live.execute("INSERT INTO public.items SELECT g, 'new', NULL "
                     "FROM generate_series(200001, 200500) g")
        if not fast_path:  # a json value makes the table unhashable: the row-by-row merge
            live.execute("UPDATE public.items SET payload = '{}' WHERE id = 1")
    ticks: list[int] = []
    with psycopg.connect(backup_copy) as scratch, demo_db.connect() as live:
        shape = table_diff.table_shape(scratch, live, QualifiedName("public", "items"))
        if fast_path:
            scratch.execute("ALTER TABLE public.items DROP COLUMN payload")
            live.execute("ALTER TABLE public.items DROP COLUMN payload")
            shape = table_diff.table_shape(scratch, live, QualifiedName("public", "items"))
        assert diff_blocks.applies(scratch, live, shape) is fast_path
        diff = table_diff.compare_table(scratch, live, shape, tick=ticks.append)

    assert sum(ticks) == diff.backup_rows == 120_000
    assert len(ticks) > 5  # it moved while it ran, not once at the end
    assert all(t >= 0 for t in ticks)


def test_a_load_run_by_another_program_is_watched_through_the_servers_copy_counters(
        demo_db, monkeypatch):
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.05)
    with psycopg.connect(demo_db.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.loaded (id int, body text)")
    rows = [f"{i}\tbody {i}\n".encode() for i in range(60_000)]
    sent = threading.Event()

    def load() -> None:  # the other program: a COPY fed slowly, in ten parts
        with psycopg.connect(demo_db.url) as conn, conn.cursor() as cur:
            with cur.copy("COPY public.loaded FROM STDIN") as copying:
                for part in range(10):
                    copying.write(b"".join(rows[part * 6000:(part + 1) * 6000]))
                    time.sleep(0.1)
            sent.set()

    loader = threading.Thread(target=load)
    with progress.LoadProgress(lambda: psycopg.connect(demo_db.url), 1_000_000,
                               "restore", enabled=True) as watched:
        loader.start()
        loader.join()
        seen_while_loading = watched.rows
    assert sent.is_set()
    with psycopg.connect(demo_db.url) as conn:
        loaded = conn.execute("SELECT count(*) FROM public.loaded").fetchone()[0]
    assert loaded == 60_000
    assert 0 < seen_while_loading <= loaded


def test_a_dump_is_watched_apart_from_loads(demo_db, monkeypatch):
    """pg_dump's COPY ... TO (step 1's archive) has its own bar: a load's bar does not
    count it, and the dump's does not count loads."""
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.05)
    with psycopg.connect(demo_db.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.dumped AS SELECT g AS id, repeat('x', 200) AS body "
                     "FROM generate_series(1, 200000) g")
    read = []

    def dump() -> None:  # the other program: a COPY TO read slowly
        with psycopg.connect(demo_db.url) as conn, conn.cursor() as cur:
            with cur.copy("COPY public.dumped TO STDOUT") as copying:
                for data in copying:
                    read.append(len(data))
                    if len(read) % 20000 == 0:
                        time.sleep(0.1)

    reader = threading.Thread(target=dump)
    with progress.LoadProgress(lambda: psycopg.connect(demo_db.url), None, "pg_dump",
                               enabled=True, command=progress.DUMPS) as dumps, \
            progress.LoadProgress(lambda: psycopg.connect(demo_db.url), None, "restore",
                                  enabled=True) as loads:
        reader.start()
        reader.join()
        seen_dumping, seen_loading = dumps.rows, loads.rows
    assert len(read) == 200000
    assert 0 < seen_dumping <= 200000
    assert seen_loading == 0
