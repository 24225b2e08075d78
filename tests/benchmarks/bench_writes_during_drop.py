"""The drop while the application keeps writing, at 1,000,000 chat messages (+100k
connections, 200k memos: 1.3 M rows in the migration's tables) (issue 16, item 1).

The application edits chat messages in a loop (one UPDATE per transaction) and a login
reads public.profiles in a loop, each on its own session, timing every statement, from
before the export of step 1 until the drop has committed. Figures: how long a write to
the migration's tables waited at most (target < 2 s: the drop blocks writes, takes the
final export from its own snapshot, then drops), how long the drop says it blocked them,
how long a login read of profiles waited at most (never beyond lock_timeout), and how
many committed writes are missing from the export the drop left (must be 0).
Run with `make bench BENCH=writes`; a throwaway cluster lives under bench-output/.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path

import psycopg
from bench_coaching import LoginProbe, loaded_database

from playbook.changesets.migration import load_migration
from playbook.procedures import drops
from playbook.runs import begin_run
from playbook.steps import rollback_coaching_tables as steps20

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-output" / "writes-during-drop"
LOCK_TIMEOUT = "2s"


class _Timed(threading.Thread):
    """Runs one statement in a loop on its own session, timing each; stops at stop() or
    at the first error (the table is gone), which it times too."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.url, self.longest, self.count, self.error = url, 0.0, 0, ""
        self.committed: dict[int, str] = {}  # message id -> body its last COMMIT wrote
        self._halt = threading.Event()
        self.ready = threading.Event()

    def statement(self, conn: psycopg.Connection, i: int) -> None:
        raise NotImplementedError

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True, application_name=self.name) as conn:
            self.prepare(conn)
            self.ready.set()
            i = 0
            while not self._halt.is_set():
                started = time.perf_counter()
                try:
                    self.statement(conn, i)
                except psycopg.Error as exc:
                    self.longest = max(self.longest, time.perf_counter() - started)
                    self.error = type(exc).__name__
                    return
                self.longest = max(self.longest, time.perf_counter() - started)
                self.count += 1
                i += 1
                time.sleep(0.001)

    def prepare(self, conn: psycopg.Connection) -> None:
        pass

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


class _Application(_Timed):
    def prepare(self, conn: psycopg.Connection) -> None:
        self.top = conn.execute("SELECT max(id) FROM public.sponsor_chat_messages").fetchone()[0]

    def statement(self, conn: psycopg.Connection, i: int) -> None:
        message, body = 1 + (i * 7919) % self.top, f"edited during the rollback ({i})"
        conn.execute("UPDATE public.sponsor_chat_messages SET body = %s WHERE id = %s",
                     (body, message))
        self.committed[message] = body  # autocommit: the statement returned = committed


def _missing_from_export(folder: Path, committed: dict[int, str]) -> int:
    with open(folder / "public.sponsor_chat_messages.csv", newline="") as handle:
        exported = {int(row["id"]): row["body"] for row in csv.DictReader(handle)
                    if int(row["id"]) in committed}
    return sum(exported.get(i) != body for i, body in committed.items())


def main() -> list[str]:
    lines = []
    with loaded_database("bench-writes", OUT) as (url, loaded):
        lines.append(loaded)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        os.environ["DATABASE_URL"] = url
        migration = load_migration("coaching_tables")
        run = begin_run("20_rollback_coaching_tables", mode="execute", confirm_database="bench")
        folder = OUT / "export"
        application = _Application(url, "the application")
        application.start()
        application.ready.wait(30)
        with LoginProbe(url) as login:
            started = time.perf_counter()
            steps20.export_data(run, migration, folder, archive=False,
                                        show_progress=False)
            step1 = time.perf_counter() - started
            time.sleep(1)  # the gate, the checklist: the application goes on writing
            before_drop = application.count
            with psycopg.connect(url) as conn:
                started = time.perf_counter()
                result = drops.perform_drop(conn, migration, folder, lock_timeout=LOCK_TIMEOUT)
                total = time.perf_counter() - started
            time.sleep(0.5)
        application.stop()
        replaced = any("replaced" in c.name for c in result.export_checks)
        outcome = "replaced step 1's" if replaced else "equal to step 1's"
        lines.append(f"step 1 export {step1:.2f}s; drop transaction {total:.2f}s, committed="
                     f"{result.committed}; final export under the write lock "
                     f"{result.final_export_s:.2f}s ({outcome})")
        lines.append(f"writes to sponsor_chat_messages: {application.count} committed "
                     f"({application.count - before_drop} after step 1's export + 1 s), the "
                     f"longest waited {application.longest * 1000:.0f} ms (target < 2000 ms); "
                     f"the drop blocked them {result.writes_blocked_ms:.0f} ms; the waiting "
                     f"write ended with {application.error or 'no error'}")
        lines.append(f"login reads of public.profiles: {login.reads}, the longest waited "
                     f"{login.longest * 1000:.0f} ms (lock_timeout {LOCK_TIMEOUT}); ACCESS "
                     f"EXCLUSIVE held {result.lock_hold_ms:.0f} ms")
        missing = _missing_from_export(folder, application.committed)
        lines.append(f"committed writes missing from the export the drop left: {missing} of "
                     f"{len(application.committed)} edited messages (must be 0)")
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
