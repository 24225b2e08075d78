"""The fast path of the primary-key diff: hashed on each server, merged in blocks.

For a table whose primary key is one integer column (the common ``bigserial id``), each
server streams ``(key, hash of the row)`` in key order as binary COPY: the hash is
``hash_record_extended(ROW(compared columns), 0)``, computed from the values themselves
(no text form of the row, five times cheaper than ``md5(row::text)``; PostgreSQL 14 and
later, stable across servers and versions since hash partitioning relies on it). Both
servers work at once while this process reads fixed-width records straight into numpy
arrays and merges them a block at a time: only a block of each side is ever held, and
only the keys that differ come out as Python values, in key order.

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

# The fixed-width binary COPY record of (key, hash): field count, then length + value each.
_KEY_WIDTHS = {"int2": 2, "int4": 4, "int8": 8}
_HEADER = 19  # "PGCOPY\n\377\r\n\0", flags, header extension length (no extension)
BLOCK_ROWS = 65_536


def _dtype(width: int) -> np.dtype:
    return np.dtype([("fields", ">i2"), ("klen", ">i4"), ("key", f">i{width}"),
                     ("hlen", ">i4"), ("hash", ">i8")])


def applies(scratch: psycopg.Connection, live: psycopg.Connection, shape) -> bool:
    """One integer key column, both servers 14 or later, and every compared column's
    type hashable on both (probed in a savepoint, so a refusal leaves the transaction
    sound)."""
    if len(shape.key) != 1 or shape.key[0].type_name not in _KEY_WIDTHS:
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


def stream_query(shape) -> sql.Composed:
    key = sql.Identifier(shape.key[0].name)
    return sql.SQL(
        "COPY (SELECT {}, hash_record_extended(ROW({}), 0) FROM {} ORDER BY {}) "
        "TO STDOUT (FORMAT binary)").format(key, shape.column_list(), shape.table.identifier,
                                            key)


class _Side:
    """One server's (key, hash) stream, read as numpy blocks. A thread reads the COPY
    (libpq waits without holding the GIL) a few blocks ahead, so that both servers work
    at once; the COPY itself is started and ended by the caller's ``cursor.copy``."""

    AHEAD = 4  # blocks of about 1 MiB read ahead: bounded memory

    def __init__(self, conn: psycopg.Connection, shape) -> None:
        self.conn = conn
        self.dtype = _dtype(_KEY_WIDTHS[shape.key[0].type_name])
        self._pending = bytearray()
        self._skip = _HEADER
        self.done = False
        self.keys = np.empty(0, np.int64)
        self.hashes = np.empty(0, np.int64)
        self._blocks: queue.Queue = queue.Queue(self.AHEAD)
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        pgconn = self.conn.pgconn
        block = bytearray()
        try:
            while not self._stop.is_set():
                size, row = pgconn.get_copy_data(0)
                if size > 0:
                    block += row
                    if len(block) < (1 << 20):
                        continue
                elif size == -2:
                    raise psycopg.OperationalError(
                        pgconn.get_error_message(self.conn.info.encoding))
                self._blocks.put(bytes(block))
                block.clear()
                if size == -1:
                    self._finish()
                    self._blocks.put(None)
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the reading side
            self._blocks.put(exc)

    def fill(self) -> None:
        """Read until this side holds at least BLOCK_ROWS records or its stream ends."""
        need = BLOCK_ROWS * self.dtype.itemsize + self._skip
        while not self.done and len(self._pending) < need:
            block = self._blocks.get()
            if block is None:
                self.done = True
            elif isinstance(block, BaseException):
                self.done = True
                raise block
            else:
                self._pending += block
        body = len(self._pending) - self._skip - (2 if self.done else 0)  # trailer: -1
        whole = max(body, 0) // self.dtype.itemsize
        end = self._skip + whole * self.dtype.itemsize
        records = np.frombuffer(bytes(self._pending[self._skip:end]), dtype=self.dtype)
        self.keys = np.concatenate([self.keys, records["key"].astype(np.int64)])
        self.hashes = np.concatenate([self.hashes, records["hash"].astype(np.int64)])
        del self._pending[:end]
        self._skip = 0

    def _finish(self) -> None:
        pgconn = self.conn.pgconn
        result = pgconn.get_result()
        while pgconn.get_result() is not None:
            pass
        if result is None or result.status != psycopg.pq.ExecStatus.COMMAND_OK:
            if result is None:
                raise psycopg.OperationalError("the server sent no result for the COPY")
            raise psycopg.errors.error_from_result(result, self.conn.info.encoding)

    def stop(self) -> None:
        """Before the COPY ends early (an error elsewhere): let the reader go, cancel the
        server's side so the reader's wait ends, and wait for it."""
        if self._reader.is_alive():
            self._stop.set()
            with contextlib.suppress(psycopg.Error):
                self.conn.cancel_safe(timeout=5)
            while self._reader.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._blocks.get(timeout=0.1)

    def take(self, upto: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The keys (and hashes) up to ``upto`` included (all when None), removed."""
        cut = len(self.keys) if upto is None else int(np.searchsorted(self.keys, upto, "right"))
        keys, hashes = self.keys[:cut], self.hashes[:cut]
        self.keys, self.hashes = self.keys[cut:], self.hashes[cut:]
        return keys, hashes


Found = Callable[[str, tuple], None]


def merged_blocks(scratch: psycopg.Connection, live: psycopg.Connection, shape
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per block, in key order: (backup keys, backup hashes, live keys, live hashes)
    covering the same key range, so the blocks can be compared on their own. Both COPYs
    run at once; nothing else may use either session until the generator ends."""
    with scratch.cursor() as b_cur, live.cursor() as l_cur, \
            b_cur.copy(stream_query(shape)), l_cur.copy(stream_query(shape)):
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
