"""The fast path of the primary-key diff: hashed on each server, merged in blocks.

For a table whose primary key is one integer column (the common ``bigserial id``), each
server hands over ``(key, hash of the row)`` in key order, a page of 65,536 rows at a time
packed into one bytea (keyset pagination on the primary key): the hash is
``hash_record_extended(ROW(compared columns), 0)``, computed from the values themselves
(no text form of the row, five times cheaper than ``md5(row::text)``; PostgreSQL 14 and
later, stable across servers and versions since hash partitioning relies on it). Both
servers work at once (a thread per side) while this process reads each page straight
into numpy arrays and merges them a block at a time: only a few pages of each side are
ever held, and only the keys that differ come out as Python values, in key order.

Two things to know. Rows compare equal when their values are equal: ``numeric`` 1.0 and
1.00 are one value here, where the text form tells them apart. And each page is its own
statement: the callers read in one snapshot (the diff step's REPEATABLE READ) or under a
lock that blocks writes to the table (the repair's), so the pages fit together.

:func:`table_diff.compare_table` uses it when :func:`applies` says so, else its row by
row merge of ``md5(row::text)``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import psycopg
from psycopg import sql

_KEY_TYPES = {"int2", "int4", "int8"}
BLOCK_ROWS = 65_536  # rows per page fetched, and per block merged
AHEAD = 4  # pages fetched ahead per side: bounded memory (16 bytes a row)


def applies(scratch: psycopg.Connection, live: psycopg.Connection, shape) -> bool:
    """One integer key column, both servers 14 or later, and every compared column's
    type hashable on both (probed in a savepoint, so a refusal leaves the transaction
    sound)."""
    if len(shape.key) != 1 or shape.key[0].type_name not in _KEY_TYPES:
        return False
    if min(scratch.info.server_version, live.info.server_version) < 140000:
        return False
    probe = sql.SQL("SELECT hash_record_extended(ROW({}), 0) FROM {} LIMIT 1").format(
        shape.column_list(), shape.table.identifier)
    for conn in (scratch, live):
        try:
            with conn.transaction():
                conn.execute(probe)
        except psycopg.errors.UndefinedFunction:  # a type without a hash function (json)
            return False
    return True


def page_query(shape) -> sql.Composed:
    """The next page of (key, row hash) after a key, in key order, as one bytea of
    big-endian int8 pairs: one message per page instead of one per row."""
    key = sql.Identifier(shape.key[0].name)
    return sql.SQL(
        "SELECT string_agg(int8send(k) || int8send(h), ''::bytea ORDER BY k) FROM "
        "(SELECT {}::int8 AS k, hash_record_extended(ROW({}), 0) AS h FROM {} "
        "WHERE {} > %s ORDER BY {} LIMIT %s) AS page").format(
        key, shape.column_list(), shape.table.identifier, key, key)


class _Side:
    """One server's (key, hash) pages, read by a thread a few pages ahead (psycopg waits
    for the server without holding the GIL), so that both servers work at once."""

    def __init__(self, conn: psycopg.Connection, shape) -> None:
        self.conn = conn
        self.query = page_query(shape)
        self.done = False
        self.keys = np.empty(0, np.int64)
        self.hashes = np.empty(0, np.int64)
        self._pages: queue.Queue = queue.Queue(AHEAD)
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        after = -(2 ** 63)
        try:
            while not self._stop.is_set():
                data = self.conn.execute(self.query, (after, BLOCK_ROWS),
                                         binary=True).fetchone()[0]
                if not data:
                    self._pages.put(None)
                    return
                pairs = np.frombuffer(data, dtype=">i8").reshape(-1, 2).astype(np.int64)
                after = int(pairs[-1, 0])
                self._pages.put(pairs)
        except BaseException as exc:  # noqa: BLE001 - handed to the merging side
            self._pages.put(exc)

    def fill(self) -> None:
        """Take pages until this side holds at least BLOCK_ROWS keys or has no more."""
        taken = [self.keys], [self.hashes]
        held = len(self.keys)
        while not self.done and held < BLOCK_ROWS:
            page = self._pages.get()
            if page is None:
                self.done = True
            elif isinstance(page, BaseException):
                self.done = True
                raise page
            else:
                taken[0].append(page[:, 0])
                taken[1].append(page[:, 1])
                held += len(page)
        self.keys, self.hashes = np.concatenate(taken[0]), np.concatenate(taken[1])

    def take(self, upto: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The keys (and hashes) up to ``upto`` included (all when None), removed."""
        cut = len(self.keys) if upto is None else int(np.searchsorted(self.keys, upto, "right"))
        keys, hashes = self.keys[:cut], self.hashes[:cut]
        self.keys, self.hashes = self.keys[cut:], self.hashes[cut:]
        return keys, hashes

    def stop(self) -> None:
        """Let the reader go (it ends after the page it is reading) and wait for it, so
        that the session is free again."""
        self._stop.set()
        while self._reader.is_alive():
            with contextlib.suppress(queue.Empty):
                self._pages.get(timeout=0.1)


Found = Callable[[str, tuple], None]


def merged_blocks(scratch: psycopg.Connection, live: psycopg.Connection, shape
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per block, in key order: (backup keys, backup hashes, live keys, live hashes)
    covering the same key range, so the blocks can be compared on their own. Both
    servers are read at once; nothing else may use either session until it ends."""
    sides: list[_Side] = []
    try:
        backup = _Side(scratch, shape)
        sides.append(backup)
        current = _Side(live, shape)
        sides.append(current)
        yield from _blocks(backup, current)
    finally:
        for side in sides:
            side.stop()


def _blocks(backup: _Side, current: _Side):
    while True:
            backup.fill()
            current.fill()
            if backup.done and current.done:
                yield (*backup.take(None), *current.take(None))
                return
            # Everything up to the smaller of the unfinished sides' last keys is complete
            # on both.
            ends = [s.keys[-1] for s in (backup, current) if not s.done and len(s.keys)]
            upto = int(min(ends)) if ends else None
            yield (*backup.take(upto), *current.take(upto))


def compare(scratch: psycopg.Connection, live: psycopg.Connection, shape, diff,
            found: Found, added_digest) -> None:
    """Fill ``diff``'s counts, then hand each differing key to ``found`` (in key order
    per kind) once both streams have ended (``found``'s sinks query the same sessions);
    rows added since the backup also go into ``added_digest`` with their hash. Only the
    differing keys are kept meanwhile, as int64 arrays."""
    from .table_diff import ADDED, CHANGED, DELETED

    kept: dict[str, list[np.ndarray]] = {DELETED: [], CHANGED: [], ADDED: []}
    for b_keys, b_hashes, l_keys, l_hashes in merged_blocks(scratch, live, shape):
        diff.backup_rows += len(b_keys)
        diff.live_rows += len(l_keys)
        common, b_at, l_at = np.intersect1d(b_keys, l_keys, assume_unique=True,
                                            return_indices=True)
        differ = b_hashes[b_at] != l_hashes[l_at]
        changed = int(differ.sum())
        diff.changed += changed
        diff.unchanged += len(common) - changed
        deleted = np.setdiff1d(b_keys, common, assume_unique=True)
        added_mask = np.ones(len(l_keys), bool)
        added_mask[l_at] = False
        diff.deleted += len(deleted)
        diff.added += int(added_mask.sum())
        kept[DELETED].append(deleted)
        kept[CHANGED].append(common[differ])
        kept[ADDED].append(l_keys[added_mask])
        for key, row_hash in zip(l_keys[added_mask].tolist(), l_hashes[added_mask].tolist(),
                                 strict=True):
            added_digest.update(f"{key}\t{row_hash}\n".encode())
    for kind, blocks in kept.items():
        for block in blocks:
            for key in block.tolist():
                found(kind, (key,))
