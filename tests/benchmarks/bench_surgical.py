"""Surgical restore (notebook 31) against the full restore of the same archive.

At N chat messages with 1% of them deleted or changed after the backup, and new rows
written since: the whole surgical path (restore to scratch, diff, repair) vs a full
restore of the same archive (pg_restore into a fresh database), rows written after the
backup kept (surgical: all; full restore: none), the diff alone vs a bare
``pg_restore -t sponsor_chat_messages``, and this process's peak memory (ru_maxrss),
measured at two sizes to show it stays flat. ``BENCH_ROWS`` sets the larger size.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import psycopg

from playbook import backups, demo_app, scratch_restore, supabase_dumps
from playbook.db import localdb, pgbinaries
from playbook.db.names import QualifiedName
from playbook.procedures import table_diff
from playbook.procedures import table_repair as repair

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-output" / "surgical"
CHAT = QualifiedName("public", "sponsor_chat_messages")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_size(admin: str, rows: int) -> list[str]:
    live = localdb.create_database(admin, f"bench_live_{rows}", replace=True)
    with psycopg.connect(live) as conn:
        demo_app.create_application(conn)
        demo_app.apply_coaching_migration(conn)
        demo_app.load_sample_data(conn, rows=rows)
    backup = backups.take_backup(live, OUT / f"backups-{rows}")
    with psycopg.connect(live, autocommit=True) as conn:
        conn.execute("DELETE FROM public.sponsor_chat_messages WHERE id % 200 = 1")
        conn.execute("UPDATE public.sponsor_chat_messages SET body = 'edited' "
                     "WHERE id % 200 = 2")
        new = conn.execute(
            "INSERT INTO public.sponsor_chat_messages (connection_id, sender_id, body) "
            "SELECT connection_id, sender_id, 'after backup' FROM public.sponsor_chat_messages "
            "ORDER BY id LIMIT 1000 RETURNING id").fetchall()
    new_ids = [r[0] for r in new]
    os.environ["BENCH_SCRATCH"] = admin
    os.environ["BENCH_LIVE"] = live
    # The whole surgical path.
    started = time.perf_counter()
    restored = supabase_dumps.restore_to_scratch(backup, "BENCH_SCRATCH")
    restore_s = time.perf_counter() - started
    with restored.scratch.connect() as scratch, psycopg.connect(live) as conn:
        t0 = time.perf_counter()
        report = table_diff.diff_tables(scratch, conn, [CHAT], OUT / f"diff-{rows}")
        diff_s = time.perf_counter() - t0
        plan = repair.plan_repair(conn, report, {}, [])
        repair.execute_repair(scratch, conn, plan)
    surgical_s = time.perf_counter() - started
    kept = psycopg.connect(live).execute(
        "SELECT count(*) FROM public.sponsor_chat_messages WHERE id = ANY(%s)",
        (new_ids,)).fetchone()[0]
    restored.scratch.drop()
    # The full restore of the same archive.
    started = time.perf_counter()
    full = scratch_restore.test_restore(backup, admin, keep=True, name=f"bench_full_{rows}")
    full_s = time.perf_counter() - started
    with psycopg.connect(localdb.database_url_for(admin, full.database)) as conn:
        kept_full = conn.execute(
            "SELECT count(*) FROM public.sponsor_chat_messages WHERE id = ANY(%s)",
            (new_ids,)).fetchone()[0]
    localdb.drop_database(admin, full.database)
    # A bare pg_restore -t of the one table.
    target = localdb.create_database(admin, f"bench_t_{rows}", replace=True)
    pg_restore = pgbinaries.client_program("pg_restore", backups.server_major_of(admin))
    t0 = time.perf_counter()
    backups.run_tool(pg_restore, ["--no-password", "-t", "sponsor_chat_messages",
                                  f"--dbname={localdb.connecting.parse(target)['dbname']}",
                                  str(backup.path)], url=target)
    bare_s = time.perf_counter() - t0
    localdb.drop_database(admin, f"bench_t_{rows}")
    localdb.drop_database(admin, f"bench_live_{rows}")
    d = report.diffs[0]
    return [
        f"rows={rows:,}: deleted {d.deleted:,}, changed {d.changed:,}, added {d.added:,}",
        f"  surgical path {surgical_s:.1f}s (restore to scratch {restore_s:.1f}s, diff "
        f"{diff_s:.1f}s) vs full restore {full_s:.1f}s: ratio {surgical_s / full_s:.2f}",
        f"  rows written after the backup kept: surgical {kept}/{len(new_ids)}, "
        f"full restore {kept_full}/{len(new_ids)}",
        f"  diff alone {diff_s:.2f}s vs bare pg_restore -t {bare_s:.2f}s",
        f"  peak memory of this process so far: {_peak_mb():.0f} MB",
    ]


def main() -> list[str]:
    big = int(os.environ.get("BENCH_ROWS", "1000000"))
    cluster = localdb.LocalCluster("bench-surgical", home=OUT)
    admin = cluster.start().url("postgres")
    try:
        lines = _one_size(admin, big // 5)
        lines += _one_size(admin, big)
    finally:
        cluster.destroy()
    return lines
