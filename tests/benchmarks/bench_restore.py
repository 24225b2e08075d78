"""Full restore of the demo at 1,000,000 chat messages: the notebook's restore step
(restore.restore_database, in place, 2 jobs) against a bare ``pg_restore -j 2`` of the
same archive into an empty database, in the same run; target ratio <= 1.1. Also the time
from "start" (plan) to "verified" (every check passed)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from playbook import backups, demo_app
from playbook.db import connecting, localdb
from playbook.procedures import restore

ROOT = Path(__file__).resolve().parents[2]
ROWS = 1_000_000


def main() -> list[str]:
    cluster = localdb.LocalCluster("bench-restore", home=ROOT / "bench-output")
    state = cluster.start()
    try:
        url = localdb.create_database(state.url("postgres"), "bench_demo", replace=True)
        with psycopg.connect(url) as conn:
            demo_app.create_application(conn)
            demo_app.apply_coaching_migration(conn)
            demo_app.load_sample_data(conn, rows=ROWS)
        folder = ROOT / "bench-output" / "backups"
        started = time.perf_counter()
        backup = backups.take_backup(url, folder)
        dump_seconds = time.perf_counter() - started

        bare_url = localdb.create_database(state.url("postgres"), "bench_bare", replace=True)
        pg_restore = backups.require_tools_for(backup, state.major)
        started = time.perf_counter()
        done = backups.run_tool(pg_restore, ["--no-password", "--jobs=2", "--dbname=bench_bare",
                                             str(backup.path)], url=bare_url)
        bare = time.perf_counter() - started
        assert done.returncode == 0, done.stderr

        started = time.perf_counter()
        with connecting.connect(url=url, read_only=True) as conn:
            plan = restore.plan_restore(conn, url, backup, jobs=2, block_connections=True,
                                        terminate_connections=True)
        result = restore.restore_database(plan, execute=True)
        with connecting.connect(url=url, read_only=True) as conn:
            checks = restore.verify_restore(conn, backup)
        restore.reopen_connections(plan, execute=True)
        verified = time.perf_counter() - started
        assert all(c.passed for c in checks), [c for c in checks if not c.passed]
        ratio = result.restore_seconds / bare
        return [
            f"archive: {backup.size / 1e6:.1f} MB, pg_dump -Fc {dump_seconds:.1f}s",
            f"bare pg_restore -j 2 into an empty database: {bare:.2f}s",
            f"notebook restore step (in place, --clean --if-exists, 2 jobs): "
            f"{result.restore_seconds:.2f}s (whole step with lock/block/terminate "
            f"{result.seconds:.2f}s)",
            f"ratio restore step / bare: {ratio:.2f} (target <= 1.1)",
            f"start (plan) to verified (every check passed): {verified:.2f}s",
        ]
    finally:
        cluster.destroy()
