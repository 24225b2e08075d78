"""Progress of the long steps, in rows and MB/s: a tqdm widget in JupyterLab, a line on
stderr under ``playbook run``.

Three sources: the playbook's own COPY loops (exports, proofs, imports) count bytes and
rows as they go; the diff counts the rows it has merged; what another program copies
(psql restoring a scratch copy, pg_dump writing step 1's archive) is watched from the
server's own progress view, ``pg_stat_progress_copy`` (PostgreSQL 14 and later), twice a
second. A progress bar never stops a step: if the server cannot be watched, the step runs
without one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg

POLL_SECONDS = 0.5


def progress_bar(total: int | None, description: str, enabled: bool, *, unit: str = "B"):
    """A bar of bytes (shown as kB/MB and MB/s) or, with ``unit="rows"``, of rows."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit if unit == "B" else f" {unit}",
                unit_scale=True, disable=not enabled, leave=False)


def show_rows(bar, rows: int, *, approximate: bool = False) -> None:
    """Rows so far beside a bar of bytes."""
    bar.set_postfix_str(f"{'~' if approximate else ''}{rows:,} rows", refresh=False)


def show_megabytes(bar, megabytes: float) -> None:
    """Megabytes read (and MB/s) beside a bar of rows."""
    elapsed = bar.format_dict.get("elapsed") or 0
    rate = f", {megabytes / elapsed:.0f} MB/s" if elapsed > 0 else ""
    bar.set_postfix_str(f"{megabytes:,.0f} MB{rate}", refresh=False)


_COPY_PROGRESS = """
SELECT relid::regclass::text, bytes_processed, tuples_processed
FROM pg_stat_progress_copy WHERE datname = current_database() AND command = %s
"""
LOADS, DUMPS = "COPY FROM", "COPY TO"


class LoadProgress:
    """While another program loads a database (``connect`` opens a session to it): the
    bytes and rows its COPY statements have processed, per table, summed into one bar
    whose total is the size of the script being loaded. ``command=DUMPS``: while a
    program (pg_dump) reads tables out with COPY ... TO instead."""

    def __init__(self, connect: Callable[[], psycopg.Connection], total_bytes: int | None,
                 description: str, enabled: bool, *, command: str = LOADS) -> None:
        self._connect = connect
        self._command = command
        self._description = description
        self._bar = progress_bar(total_bytes, description, enabled)
        self._enabled = enabled
        self._stop = threading.Event()
        self._seen: dict[str, tuple[int, int]] = {}  # table -> (bytes, rows), the most seen
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> LoadProgress:
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._bar.close()

    def _watch(self) -> None:
        try:
            with self._connect() as conn:
                conn.autocommit = True
                while not self._stop.wait(POLL_SECONDS):
                    for table, done, rows in conn.execute(_COPY_PROGRESS,
                                                          (self._command,)).fetchall():
                        before = self._seen.get(table, (0, 0))
                        self._seen[table] = (max(before[0], done or 0),
                                             max(before[1], rows or 0))
                        self._bar.set_description_str(f"{self._description}: {table}",
                                                      refresh=False)
                    self.show()
        except Exception:  # noqa: BLE001 - the load goes on without its bar
            return

    def show(self) -> None:
        done = sum(b for b, _ in self._seen.values())
        self._bar.update(done - self._bar.n)
        show_rows(self._bar, sum(r for _, r in self._seen.values()))

    @property
    def rows(self) -> int:
        return sum(r for _, r in self._seen.values())
