"""The fast path of the primary-key diff: hashed on each server, merged in blocks.

For a table whose primary key is one integer column (the common ``bigserial id``), each
server hands over ``(key, hash of the row)`` a key range of about 65,536 rows at a time,
packed into one bytea and sorted here (:class:`_Side`): the hash is
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

from ..errors import VerificationFailed

_KEY_TYPES = {"int2", "int4", "int8"}
BLOCK_ROWS = 65_536  # rows per page fetched, and per block merged
AHEAD = 4  # pages fetched ahead per side: bounded memory (16 bytes a row)
RANGE_LIMIT = 4  # the widest key range read at once, in pages (BLOCK_ROWS keys each)


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


def range_query(shape) -> sql.Composed:
    """(key, row hash) of the rows whose key lies in [%s, %s], as one bytea of big-endian
    int8 pairs: one message per page instead of one per row. A key range is read through
    a bitmap of the primary key, so the table's pages are visited in their physical
    order (an ordered index scan jumps about the heap wherever rows were updated: each
    page cost 1.5 times as much here); the rows come in no particular order and the
    reader sorts them."""
    key = sql.Identifier(shape.key[0].name)
    return sql.SQL(
        "SELECT string_agg(int8send({}::int8) || int8send(hash_record_extended(ROW({}), 0)), "
        "''::bytea) FROM {} WHERE {} BETWEEN %s AND %s").format(
        key, shape.column_list(), shape.table.identifier, key)


def page_query(shape) -> sql.Composed:
    """The page of (key, row hash) from a key on, at most %s rows, same encoding: for
    keys so sparse that a range of a few pages' width would hold too few rows."""
    key = sql.Identifier(shape.key[0].name)
    return sql.SQL(
        "SELECT string_agg(int8send(k) || int8send(h), ''::bytea) FROM "
        "(SELECT {}::int8 AS k, hash_record_extended(ROW({}), 0) AS h FROM {} "
        "WHERE {} >= %s ORDER BY {} LIMIT %s) AS page").format(
        key, shape.column_list(), shape.table.identifier, key, key)


def bounds_query(shape) -> sql.Composed:
    key = sql.Identifier(shape.key[0].name)
    return sql.SQL("SELECT min({})::int8, max({})::int8 FROM {}").format(
        key, key, shape.table.identifier)


def _pairs(data: bytes) -> np.ndarray:
    """A page's (key, hash) pairs, sorted by key."""
    pairs = np.frombuffer(data, dtype=">i8").reshape(-1, 2).astype(np.int64)
    if not np.all(pairs[1:, 0] > pairs[:-1, 0]):
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    return pairs


class _Side:
    """One server's (key, hash) pages, read by a thread a few pages ahead (psycopg waits
    for the server without holding the GIL), so that both servers work at once.

    Pages are key ranges sized to hold about BLOCK_ROWS rows from the density seen so
    far. Keys are unique integers, so a range of width w holds at most w rows: a range is
    never wider than RANGE_LIMIT pages' worth, which bounds memory whatever the keys;
    where keys are sparser than that allows, the page is read by keyset pagination
    instead (ordered, LIMIT BLOCK_ROWS)."""

    def __init__(self, conn: psycopg.Connection, shape) -> None:
        self.conn = conn
        self.ranges = range_query(shape)
        self.query = page_query(shape)
        self.bounds = bounds_query(shape)
        self.done = False
        self.keys = np.empty(0, np.int64)
        self.hashes = np.empty(0, np.int64)
        self._pages: queue.Queue = queue.Queue(AHEAD)
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _page(self, low: int, width: int, high: int) -> tuple[np.ndarray | None, int]:
        """The page starting at key ``low``, and the last key it covers."""
        if width <= RANGE_LIMIT * BLOCK_ROWS:
            last = min(low + width - 1, high)
            data = self.conn.execute(self.ranges, (low, last), binary=True).fetchone()[0]
            return (_pairs(data) if data else None), last
        data = self.conn.execute(self.query, (low, BLOCK_ROWS), binary=True).fetchone()[0]
        if not data:
            return None, high
        pairs = _pairs(data)
        return pairs, max(int(pairs[-1, 0]), low)  # never behind: the reading always ends

    def _read(self) -> None:
        try:
            low, high = self.conn.execute(self.bounds).fetchone()
            width = BLOCK_ROWS
            while low is not None and low <= high and not self._stop.is_set():
                pairs, last = self._page(low, width, high)
                rows = 0 if pairs is None else len(pairs)
                if rows:
                    self._pages.put(pairs)
                # The next width from this page's density, growing at most fourfold.
                covered = last - low + 1
                width = max(1, min(width * 4, covered * BLOCK_ROWS // max(rows, 1)))
                if last >= high:
                    break
                low = last + 1
            self._pages.put(None)
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
        # Everything up to the smaller of the unfinished sides' last keys is complete on
        # both (the pages are sorted, so the side that ends there gives up every key).
        ends = [s.keys[-1] for s in (backup, current) if not s.done and len(s.keys)]
        upto = int(min(ends)) if ends else None
        block = (*backup.take(upto), *current.take(upto))
        if not len(block[0]) and not len(block[2]):
            raise VerificationFailed(
                "The diff's merge made no progress: a page of keys was not in key order "
                "(a playbook defect). Nothing was changed.",
                next_step="report it; compare the table by hand meanwhile, or restore it "
                "with the full restore notebook (30_full_restore).")
        yield block


def compare(scratch: psycopg.Connection, live: psycopg.Connection, shape, diff,
            added_digest, tick: Callable[[int], None] | None = None
            ) -> dict[str, np.ndarray]:
    """Fill ``diff``'s counts and return the differing keys per kind (deleted, changed,
    added), each in key order, as int64 arrays (only they are kept); rows added since the
    backup also go into ``added_digest`` with their hash. ``tick`` gets the backup rows
    of each block merged (the progress bar)."""
    from .table_diff import ADDED, CHANGED, DELETED

    kept: dict[str, list[np.ndarray]] = {DELETED: [], CHANGED: [], ADDED: []}
    for b_keys, b_hashes, l_keys, l_hashes in merged_blocks(scratch, live, shape):
        diff.backup_rows += len(b_keys)
        diff.live_rows += len(l_keys)
        # Both blocks are sorted and unique: each backup key's place among live's keys.
        at = np.minimum(np.searchsorted(l_keys, b_keys), max(len(l_keys) - 1, 0))
        matched = (l_keys[at] == b_keys) if len(l_keys) else np.zeros(len(b_keys), bool)
        b_at, l_at = np.flatnonzero(matched), at[matched]
        common = b_keys[b_at]
        differ = b_hashes[b_at] != l_hashes[l_at]
        changed = int(differ.sum())
        diff.changed += changed
        diff.unchanged += len(common) - changed
        deleted = b_keys[~matched]
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
        if tick is not None:
            tick(len(b_keys))
    return {kind: np.concatenate(blocks) if blocks else np.empty(0, np.int64)
            for kind, blocks in kept.items()}
