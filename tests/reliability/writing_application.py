"""An application that keeps writing while a rollback runs: one transaction per write on
its own session, each write whose COMMIT returned noted in commit order."""

from __future__ import annotations

import threading
import time

import psycopg

GONE = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)


class WritingApplication:
    """Calls ``write(conn, i)`` (each commits, returns what it wrote) in a loop on its own
    session, and records each write whose COMMIT returned (``committed``, in commit order).
    Stops at ``stop()`` or once what it writes to is gone (the rollback committed)."""

    name = "the application"

    def __init__(self, url: str) -> None:
        self.url = url
        self.committed: list[tuple] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def prepare(self, conn: psycopg.Connection) -> None:
        """Read what the writes need, before the first one."""

    def write(self, conn: psycopg.Connection, i: int) -> tuple:  # pragma: no cover
        raise NotImplementedError

    def _loop(self) -> None:
        with psycopg.connect(self.url, application_name=self.name) as conn:
            self.prepare(conn)
            conn.commit()
            i = 0
            while not self._stop.is_set():
                try:
                    self.committed.append(self.write(conn, i))
                except psycopg.Error as exc:
                    self.errors.append(type(exc).__name__)
                    if conn.closed:
                        return
                    conn.rollback()
                    if isinstance(exc, GONE):
                        return  # the rollback committed: nothing left to write to
                i += 1
                time.sleep(0.002)

    def start(self) -> WritingApplication:
        self._thread.start()
        return self

    def wait_for(self, writes: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.committed) < writes:
            assert time.monotonic() < deadline, (
                f"the application wrote only {len(self.committed)}, errors {self.errors}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
