"""Coaching rollback at scale: 1,000,000 chat messages (+100k connections, 200k memos).

Figures: export with SHA-256 vs `psql \\copy (SELECT * FROM t) TO file CSV HEADER` of the same
tables (target ratio <= 1.0); re-import with exports.import_csv vs `psql \\copy t FROM file
CSV HEADER` into the same freshly migrated tables (target <= 1.0); how long the drop holds
its ACCESS EXCLUSIVE locks (target < 200 ms); and the whole recovery. Run with
`make bench BENCH=coaching`; a throwaway cluster lives under bench-output/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import psycopg

from playbook import demo_app, drops, localdb, recovery
from playbook.exports import client_environment, export_tables, import_csv
from playbook.migrations import load_migration
from playbook.names import QualifiedName
from playbook.pgbinaries import client_program
from playbook.queries import run_script

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-output" / "coaching"
ROWS = int(os.environ.get("BENCH_COACHING_ROWS", "1000000"))
TABLES = [QualifiedName("public", n) for n in
          ("sponsor_connections", "sponsor_visible_memos", "sponsor_chat_messages")]


def _psql(url: str, major: int, command: str) -> None:
    subprocess.run([str(client_program("psql", major)), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                    "-c", command], env=client_environment(url), check=True,
                   capture_output=True)


def main() -> list[str]:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    cluster = localdb.LocalCluster("bench-coaching", home=OUT)
    state = cluster.start()
    lines = []
    try:
        url = localdb.create_database(state.url("postgres"), "bench", replace=True)
        with psycopg.connect(url) as conn:
            demo_app.create_application(conn)
            demo_app.apply_coaching_migration(conn)
            started = time.perf_counter()
            counts = demo_app.load_sample_data(conn, rows=ROWS)
        lines.append(f"loaded {counts} in {time.perf_counter() - started:.1f}s")
        migration = load_migration("coaching_tables")
        major = state.major

        # Export with checksums (one snapshot) vs psql \copy TO.
        folder = OUT / "export"
        with psycopg.connect(url) as conn:
            started = time.perf_counter()
            manifest = export_tables(conn, TABLES, folder, purpose="bench", show_progress=False,
                                     extra={"migration": migration.name,
                                            "import_order": [str(t) for t in TABLES]})
            ours = time.perf_counter() - started
        started = time.perf_counter()
        for table in TABLES:
            _psql(url, major, f"\\copy (SELECT * FROM {table}) TO "
                  f"'{OUT / ('psql-' + table.name + '.csv')}' CSV HEADER")
        theirs = time.perf_counter() - started
        size = sum(f.bytes for f in manifest.files) / 1e6
        lines.append(f"export with SHA-256: {ours:.2f}s ({size:.0f} MB); psql \\copy TO: "
                     f"{theirs:.2f}s; ratio {ours / theirs:.2f} (target <= 1.0)")

        # Drop: the ACCESS EXCLUSIVE lock hold time.
        with psycopg.connect(url) as conn:
            started = time.perf_counter()
            result = drops.perform_drop(conn, migration, folder)
            total = time.perf_counter() - started
        lines.append(f"drop: whole transaction {total * 1000:.0f} ms; ACCESS EXCLUSIVE held "
                     f"{result.lock_hold_ms:.0f} ms (target < 200 ms)")

        # Re-import: psql \copy FROM vs import_csv, each into freshly migrated tables.
        with psycopg.connect(url) as conn:
            run_script(conn, migration.deploy)
            conn.commit()
        started = time.perf_counter()
        for table in TABLES:
            _psql(url, major, f"\\copy {table} FROM '{folder / manifest.by_table()[str(table)].file}'"
                  " CSV HEADER")
        theirs = time.perf_counter() - started
        with psycopg.connect(url) as conn:
            conn.execute("TRUNCATE " + ", ".join(str(t) for t in TABLES))  # noqa: S608
            conn.commit()
            started = time.perf_counter()
            for table in TABLES:
                import_csv(conn, table, folder / manifest.by_table()[str(table)].file)
            conn.commit()
            ours = time.perf_counter() - started
        lines.append(f"re-import: import_csv {ours:.2f}s; psql \\copy FROM {theirs:.2f}s; "
                     f"ratio {ours / theirs:.2f} (target <= 1.0)")

        # The whole recovery (re-apply, re-import, sequences, proof) after a real drop.
        with psycopg.connect(url) as conn:
            drops.perform_drop(conn, migration, folder)
        with psycopg.connect(url) as conn:
            started = time.perf_counter()
            recovered = recovery.perform_recovery(conn, migration, folder)
            lines.append(f"full recovery with proof: {time.perf_counter() - started:.2f}s, "
                         f"committed={recovered.committed}")
    finally:
        cluster.destroy()
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
