"""Coaching rollback at scale: 1,000,000 chat messages (+100k connections, 200k memos).

Figures: export with SHA-256 vs `psql \\copy (SELECT * FROM t) TO file CSV HEADER` of the same
tables (target ratio <= 1.0); re-import with recovery.bulk_import (the recovery's import
step: foreign keys and secondary indexes set aside, COPY, rebuilt in bulk, schema proven
identical) vs `psql \\copy t FROM file CSV HEADER` into the same freshly migrated tables
(target <= 1.0); how long the drop holds its ACCESS EXCLUSIVE locks (target < 200 ms), and
the longest a login-like read of public.profiles waited meanwhile; and the whole recovery.
Run with `make bench BENCH=coaching`; a throwaway cluster lives under bench-output/.

The machine is shared, so each side of a comparison runs several times, interleaved, and
the medians are compared; every import starts from empty tables after a CHECKPOINT, so
neither side pays for the other's dirty buffers or WAL.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from playbook import demo_app, exports
from playbook.changesets.migration import load_migration
from playbook.db import localdb
from playbook.db.names import QualifiedName
from playbook.db.pgbinaries import client_environment, client_program
from playbook.db.queries import run_script
from playbook.exports import export_tables
from playbook.procedures import drops, recovery

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-output" / "coaching"
ROWS = int(os.environ.get("BENCH_COACHING_ROWS", "1000000"))
EXPORT_REPEATS = 3
IMPORT_REPEATS = 3
TABLES = [QualifiedName("public", n) for n in
          ("sponsor_connections", "sponsor_visible_memos", "sponsor_chat_messages")]


def _psql(url: str, major: int, command: str) -> None:
    subprocess.run([str(client_program("psql", major)), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                    "-c", command], env=client_environment(url), check=True,
                   capture_output=True)


def _runs(seconds: list[float]) -> str:
    return "[" + ", ".join(f"{s:.2f}" for s in seconds) + "]"


def _empty_and_checkpoint(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(str(t) for t in TABLES))  # noqa: S608
        conn.execute("CHECKPOINT")


class LoginProbe:
    """Reads one profile by id in a loop on its own session (what a login does) and
    records the longest single read: how long the drop's locks made the application wait."""

    def __init__(self, url: str) -> None:
        self.url, self.longest, self.reads = url, 0.0, 0
        self._stop = threading.Event()
        self._ready = threading.Event()

    def _loop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            user = conn.execute("SELECT id FROM public.profiles LIMIT 1").fetchone()[0]
            self._ready.set()
            while not self._stop.is_set():
                started = time.perf_counter()
                conn.execute("SELECT username FROM public.profiles WHERE id = %s", (user,))
                self.longest = max(self.longest, time.perf_counter() - started)
                self.reads += 1
                time.sleep(0.001)

    def __enter__(self) -> LoginProbe:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_major() -> int | None:
    """``BENCH_PG=15`` runs a benchmark on Debian's PostgreSQL 15 (what Supabase runs);
    unset: the embedded default (16)."""
    value = os.environ.get("BENCH_PG", "").strip()
    return int(value) if value else None


@contextmanager
def loaded_database(name: str, out: Path) -> Iterator[tuple[str, str]]:
    """A throwaway cluster under ``out`` holding the demo application, the coaching
    migration and ROWS chat messages; yields (url, what was loaded and how long it took).
    The cluster is destroyed afterwards."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cluster = localdb.LocalCluster(name, home=out, major=bench_major())
    state = cluster.start()
    try:
        url = localdb.create_database(state.url("postgres"), "bench", replace=True)
        with psycopg.connect(url) as conn:
            demo_app.create_application(conn)
            demo_app.apply_coaching_migration(conn)
            started = time.perf_counter()
            counts = demo_app.load_sample_data(conn, rows=ROWS)
        yield url, f"loaded {counts} in {time.perf_counter() - started:.1f}s"
    finally:
        cluster.destroy()


def main() -> list[str]:
    lines = []
    with loaded_database("bench-coaching", OUT) as (url, loaded):
        lines.append(loaded)
        with psycopg.connect(url) as conn:
            major = conn.info.server_version // 10000
        migration = load_migration("coaching_tables")

        # Export with checksums (one snapshot) vs psql \copy TO, interleaved.
        folder = OUT / "export"
        ours_runs, theirs_runs = [], []
        for _ in range(EXPORT_REPEATS):
            shutil.rmtree(folder, ignore_errors=True)
            with psycopg.connect(url) as conn:
                started = time.perf_counter()
                manifest = export_tables(conn, TABLES, folder, purpose="bench",
                                         show_progress=False,
                                         extra={"migration": migration.name,
                                                "import_order": [str(t) for t in TABLES]})
                ours_runs.append(time.perf_counter() - started)
            started = time.perf_counter()
            for table in TABLES:
                target = OUT / f"psql-{table.name}.csv"
                _psql(url, major, f"\\copy (SELECT * FROM {table}) TO '{target}' CSV HEADER")  # noqa: S608, E501
            theirs_runs.append(time.perf_counter() - started)
        ours, theirs = statistics.median(ours_runs), statistics.median(theirs_runs)
        size = sum(f.bytes for f in manifest.files) / 1e6
        lines.append(f"export with SHA-256 ({exports.EXPORT_JOBS} sessions, one snapshot): "
                     f"median {ours:.2f}s of {_runs(ours_runs)} ({size:.0f} MB); psql \\copy TO: "
                     f"median {theirs:.2f}s of {_runs(theirs_runs)}; ratio {ours / theirs:.2f} "
                     "(target <= 1.0)")

        # Drop: the ACCESS EXCLUSIVE lock hold time, and what a login waited meanwhile.
        with psycopg.connect(url) as conn:
            with LoginProbe(url) as probe:
                started = time.perf_counter()
                result = drops.perform_drop(conn, migration, folder)
                total = time.perf_counter() - started
        lines.append(f"drop: whole transaction {total * 1000:.0f} ms; ACCESS EXCLUSIVE held "
                     f"{result.lock_hold_ms:.0f} ms (target < 200 ms); a login read of "
                     f"public.profiles waited at most {probe.longest * 1000:.0f} ms "
                     f"({probe.reads} reads during the drop)")

        # Re-import: psql \copy FROM vs import_csv, each into empty freshly migrated tables
        # after a CHECKPOINT, alternating which goes first.
        with psycopg.connect(url) as conn:
            run_script(conn, migration.deploy)
            conn.commit()
        ours_runs, theirs_runs = [], []
        for repeat in range(IMPORT_REPEATS):
            for side in (("psql", "ours") if repeat % 2 == 0 else ("ours", "psql")):
                _empty_and_checkpoint(url)
                if side == "psql":
                    started = time.perf_counter()
                    for table in TABLES:
                        _psql(url, major, f"\\copy {table} FROM "
                              f"'{folder / manifest.by_table()[str(table)].file}' CSV HEADER")
                    theirs_runs.append(time.perf_counter() - started)
                else:
                    # The recovery's own import step: foreign keys and secondary indexes set
                    # aside, COPY, re-created and validated in bulk, schema proven identical.
                    with psycopg.connect(url) as conn:
                        started = time.perf_counter()
                        recovery.bulk_import(conn, TABLES, folder, manifest)
                        conn.commit()
                        ours_runs.append(time.perf_counter() - started)
        ours, theirs = statistics.median(ours_runs), statistics.median(theirs_runs)
        lines.append(f"re-import (one transaction, recovery.bulk_import: keys and indexes "
                     f"rebuilt in bulk, schema proven): median {ours:.2f}s of "
                     f"{_runs(ours_runs)}; psql \\copy FROM (a transaction per table) median "
                     f"{theirs:.2f}s of {_runs(theirs_runs)}; ratio {ours / theirs:.2f} "
                     "(target <= 1.0)")
        _empty_and_checkpoint(url)
        with psycopg.connect(url) as conn:
            conn.execute("DROP TABLE " + ", ".join(str(t) for t in TABLES))  # noqa: S608
            conn.commit()

        # The whole recovery (re-apply, re-import, sequences, proof) after a real drop.
        with psycopg.connect(url) as conn:
            started = time.perf_counter()
            recovered = recovery.perform_recovery(conn, migration, folder)
            lines.append(f"full recovery with proof: {time.perf_counter() - started:.2f}s, "
                         f"committed={recovered.committed}")
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
