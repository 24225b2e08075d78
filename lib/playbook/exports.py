"""Exports: table data to CSV with row counts and SHA-256, listed in a manifest.

The procedure document exports with ``\\copy (SELECT * FROM t) TO 'file.csv' CSV HEADER``.
We do the same through COPY ... TO STDOUT, hashing while writing, inside one
REPEATABLE READ read-only transaction so every file of an export shows the same moment.
Several tables are exported side by side on up to :data:`EXPORT_JOBS` sessions that all
run in that one transaction's snapshot (``pg_export_snapshot()`` / ``SET TRANSACTION
SNAPSHOT``, as ``pg_dump -j`` does), so the export still shows one moment.
A manifest (``manifest.json``) lists each file's table, rows, bytes and SHA-256; a step
that relies on an export (a drop, a re-import) first checks the manifest against the
files and the live data.

An export is written under an ``INCOMPLETE`` marker, created (and fsynced) before the
first file and removed only after every file and the manifest are fsynced, so an export
cut short (Ctrl-C, ``kill -9``, a full disk, a lost session) is never taken for one:
:func:`read_manifest` refuses a folder holding the marker, or the ``SUPERSEDED`` marker of
an export that a later one (taken under the drop's write lock) replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from .db.names import QualifiedName
from .errors import ExportFailed, ExportMismatch
from .progress import progress_bar, show_rows

MANIFEST = "manifest.json"
INCOMPLETE = "INCOMPLETE"  # present while an export is being written
SUPERSEDED = "SUPERSEDED"  # an export replaced by a later one (its text names which)
CHUNK = 1 << 20
# Sessions an export uses at most (one per table at a time). COPY's text formatting runs
# in the server, one core per session; more sessions than cores only add contention.
EXPORT_JOBS = 2


@dataclass
class ExportedFile:
    table: str  # schema.name as the operator reads it
    schema: str
    name: str
    file: str  # relative to the export folder
    rows: int
    bytes: int
    sha256: str
    value_digest: str = ""  # the rows as values, digested on the server (value_digest.py)


@dataclass
class Manifest:
    created_at: str
    database: str
    purpose: str
    files: list[ExportedFile] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def by_table(self) -> dict[str, ExportedFile]:
        return {f.table: f for f in self.files}


def copy_out(conn: psycopg.Connection, copy: sql.Composable, path: Path | None, bar,
              stop: threading.Event | None = None) -> tuple[int, int, str]:
    """Run a COPY ... TO STDOUT into ``path`` (None: only hash it); returns (rows, bytes,
    sha256).

    COPY hands over one row per message. psycopg starts the COPY (and reports a bad
    statement); the rows are then read straight from libpq (``PGconn.get_copy_data``,
    which waits without holding the GIL) and appended to a ~1 MiB block before each
    write, hash update and progress update. That costs a third of the client CPU of
    reading through ``Copy.read()`` and writing row by row, which matters because the
    client competes with the server for the same cores."""
    digest = hashlib.sha256()
    written = 0
    messages = 0  # one per row
    block = bytearray()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    pgconn = conn.pgconn
    get_copy_data = pgconn.get_copy_data
    with conn.cursor() as cur, (open(path, "wb") if path is not None
                                else contextlib.nullcontext(_Discard())) as out:
        with cur.copy(copy):
            while True:
                size, row = get_copy_data(0)
                if size > 0:
                    block += row  # copied at once, so libpq's row buffer is freed at once
                    messages += 1
                    if len(block) < CHUNK:
                        continue
                elif size == -2:
                    raise psycopg.OperationalError(
                        pgconn.get_error_message(conn.info.encoding))
                out.write(block)
                digest.update(block)
                written += len(block)
                bar.update(len(block))
                show_rows(bar, messages)
                block.clear()
                if size == -1:  # the end of the data: the COPY's own result follows
                    break
                if stop is not None and stop.is_set():
                    raise _Stopped()
            result = pgconn.get_result()
            while pgconn.get_result() is not None:
                pass
            if result is None or result.status != psycopg.pq.ExecStatus.COMMAND_OK:
                if result is None:
                    raise psycopg.OperationalError("the server sent no result for the COPY")
                raise psycopg.errors.error_from_result(result, conn.info.encoding)
            rows = result.command_tuples
    return rows, written, digest.hexdigest()


class _Discard:
    def write(self, _data: bytes) -> None:
        pass


class _Stopped(Exception):
    """Another session of the same export failed: stop this one too."""


class _NoSnapshot(Exception):
    """The server would not export the transaction's snapshot: export on one session."""


def _copy_statement(query: sql.Composable) -> sql.Composed:
    return sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER)").format(query)


def export_statement(table: QualifiedName, condition: sql.Composable | None = None
                     ) -> sql.Composed:
    """The COPY ... TO STDOUT that exports ``table`` (review mode shows this very one)."""
    query = sql.SQL("SELECT * FROM {}").format(table.identifier)
    if condition is not None:
        query += sql.SQL(" WHERE ") + condition
    return _copy_statement(query)


def export_file_name(table: QualifiedName) -> str:
    return f"{table.schema}.{table.name}.csv"


def export_query(conn: psycopg.Connection, query: sql.Composable, path: Path,
                 *, show_progress: bool = False, description: str = "") -> tuple[int, int, str]:
    """COPY (query) TO a CSV file with a header; returns (rows, bytes, sha256)."""
    with progress_bar(None, description or path.name, show_progress) as bar:
        return copy_out(conn, _copy_statement(query), path, bar)


def _session_settings_to_copy(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Settings this session changed (SET, set_config): a helper session of the export
    needs the same ones (time zone and date style decide the CSV's bytes)."""
    return conn.execute(
        "SELECT name, current_setting(name) FROM pg_settings WHERE source = 'session' "
        "AND name NOT IN ('transaction_isolation', 'transaction_read_only', "
        "'transaction_deferrable', 'session_authorization')").fetchall()


def _rows_in_physical_order(conn: psycopg.Connection) -> None:
    """For the rest of the transaction, a table is read from its first page even while
    another scan of it runs (no synchronized scan starting mid-table): two exports of
    unchanged data then write the same bytes, which the drop relies on to tell whether
    step 1's export still holds everything."""
    conn.execute("SELECT set_config('synchronize_seqscans', 'off', true)")


def _export_snapshot(conn: psycopg.Connection) -> str:
    """The name under which other sessions (and pg_dump --snapshot) can share the
    snapshot of ``conn``'s transaction. Raises _NoSnapshot, which leaves that transaction
    aborted, when the server will not export it."""
    try:  # (not in a savepoint: PostgreSQL exports no snapshot from a subtransaction)
        return conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
    except psycopg.Error:
        if conn.broken or conn.closed:
            raise  # the session is lost, not the snapshot refused: say that
        raise _NoSnapshot() from None


def _snapshot_sessions(conn: psycopg.Connection, count: int,
                       lock_timeout: str | None = None, snapshot: str | None = None
                       ) -> list[psycopg.Connection]:
    """Up to ``count`` more sessions to the same database, each in a REPEATABLE READ
    read-only transaction on the snapshot of ``conn``'s current transaction (``snapshot``,
    or one exported now by :func:`_export_snapshot`). Returns fewer (possibly none) when
    the server or the connection cannot offer them (no connection slots left...): the
    export then runs on fewer sessions, never on a different snapshot.
    ``lock_timeout``: how long a helper's COPY may wait for its table (while ``conn``
    holds a lock, an application's request queued behind it would hold a helper back)."""
    if count <= 0:
        return []
    snapshot = snapshot or _export_snapshot(conn)
    settings = _session_settings_to_copy(conn)
    # The parameters libpq used for this session (password included) stay in memory.
    params = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info
              if o.val is not None}
    sessions: list[psycopg.Connection] = []
    for _ in range(count):
        try:
            helper = psycopg.connect(**params, autocommit=True)
        except psycopg.Error:
            break
        try:
            for name, value in settings:
                helper.execute("SELECT set_config(%s, %s, false)", (name, value))
            if lock_timeout is not None:
                helper.execute("SELECT set_config('lock_timeout', %s, false)",
                               (lock_timeout,))
            helper.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            helper.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            _rows_in_physical_order(helper)
        except psycopg.Error:
            helper.close()
            break
        sessions.append(helper)  # the ones that made it are all on the shared snapshot
    return sessions


def _work(tables: Sequence[QualifiedName], where: dict[str, sql.Composable] | None
          ) -> list[tuple[int, QualifiedName, sql.Composed, str]]:
    return [(index, table, export_statement(table, (where or {}).get(str(table))),
             export_file_name(table)) for index, table in enumerate(tables)]


def _new_manifest(conn: psycopg.Connection, purpose: str, extra: dict | None) -> Manifest:
    return Manifest(created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    database=conn.info.dbname, purpose=purpose, extra=dict(extra or {}))


def _list_files(manifest: Manifest, work: list, results: dict) -> None:
    for index, table, _copy, file in work:
        rows, size, digest = results[index]
        manifest.files.append(
            ExportedFile(str(table), table.schema, table.name, file, rows, size, digest))


def export_tables(conn: psycopg.Connection, tables: Sequence[QualifiedName], folder: Path,
                  *, purpose: str, show_progress: bool = True,
                  where: dict[str, sql.Composable] | None = None,
                  extra: dict | None = None, jobs: int = EXPORT_JOBS,
                  complete: bool = True,
                  in_snapshot: Callable[[psycopg.Connection, str | None], None] | None = None
                  ) -> Manifest:
    """Export ``tables`` (optionally filtered by a per-table WHERE) to ``folder`` in one
    consistent snapshot and write the manifest. The session must not be in a transaction.

    With several tables, up to ``jobs`` sessions export side by side, largest table
    first, all in the snapshot of ``conn``'s transaction; the manifest lists the files
    in the order of ``tables`` whatever order they were written in. The folder stays
    marked INCOMPLETE until the end (``complete=False``: until the caller, who adds
    more to it, calls :func:`mark_complete`). ``in_snapshot(conn, snapshot)`` runs once
    the files are written, still in that transaction (``snapshot``: its exported name
    for pg_dump --snapshot, None when the server would not export it)."""
    begin_export_folder(folder)
    manifest = _new_manifest(conn, purpose, extra)
    work = _work(tables, where)
    # Inside a caller's transaction ours is a savepoint, whose snapshot cannot be shared.
    shareable = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    extra_sessions = min(jobs, len(work)) - 1 if shareable else 0
    previous = (conn.isolation_level, conn.read_only)
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with writing_into(folder):
            while True:
                try:
                    with conn.transaction():
                        # A COPY of millions of rows must not be cut by the session's
                        # interactive statement_timeout (read-only: no lock to bound).
                        conn.execute("SELECT set_config('statement_timeout', '0', true)")
                        manifest.extra.setdefault("session", session_settings(conn))
                        _rows_in_physical_order(conn)
                        snapshot = (_export_snapshot(conn) if shareable and (
                            extra_sessions or in_snapshot) else None)
                        helpers = _snapshot_sessions(conn, extra_sessions, snapshot=snapshot)
                        try:
                            results = _run_exports(conn, helpers, work, folder, show_progress)
                        finally:
                            for helper in helpers:
                                helper.close()
                        if in_snapshot is not None:
                            in_snapshot(conn, snapshot)
                except _NoSnapshot:
                    # That transaction was rolled back: again, on one session.
                    extra_sessions, shareable = 0, False
                    continue
                break
    except BaseException:
        # A session left mid-COPY refuses new settings; that must not hide why we stopped.
        with contextlib.suppress(psycopg.Error):
            conn.isolation_level, conn.read_only = previous
        raise
    conn.isolation_level, conn.read_only = previous
    _list_files(manifest, work, results)
    write_manifest(folder, manifest)
    if complete:
        mark_complete(folder, manifest)
    return manifest


def export_in_transaction(conn: psycopg.Connection, tables: Sequence[QualifiedName],
                          folder: Path, *, purpose: str, lock_timeout: str,
                          extra: dict | None = None, jobs: int = EXPORT_JOBS,
                          show_progress: bool = False) -> Manifest:
    """Export ``tables`` from ``conn``'s open top-level transaction, as it sees them now,
    into ``folder`` (marked INCOMPLETE until the caller's :func:`mark_complete`).

    Meant for a transaction that holds a lock blocking every write to ``tables`` (the
    drop's): the snapshot exported here (``pg_export_snapshot()``, taken after the lock
    was granted) then shows every write committed to them, and helper sessions on that
    snapshot write the files side by side; ``conn`` itself exports too (under the lock
    each of its statements sees the same rows). A snapshot that cannot be shared is an
    error: the caller's transaction is aborted and must roll back."""
    begin_export_folder(folder)
    manifest = _new_manifest(conn, purpose, extra)
    manifest.extra["session"] = session_settings(conn)
    _rows_in_physical_order(conn)
    work = _work(tables, None)
    with writing_into(folder):
        try:
            helpers = _snapshot_sessions(conn, min(jobs, len(work)) - 1, lock_timeout)
        except _NoSnapshot:
            raise ExportFailed(
                "The server would not share the drop transaction's snapshot "
                "(pg_export_snapshot), so the final export could not be taken. The "
                "transaction was rolled back; nothing was dropped.",
                next_step="run the drop against the primary, not a standby or a pooler.",
            ) from None
        try:
            results = _run_exports(conn, helpers, work, folder, show_progress)
        finally:
            for helper in helpers:
                helper.close()
    _list_files(manifest, work, results)
    write_manifest(folder, manifest)
    return manifest


# --- marking an export complete --------------------------------------------------------


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def begin_export_folder(folder: Path) -> None:
    """Create ``folder`` if needed and mark it INCOMPLETE (on disk) before anything else
    is written; a manifest left from an earlier export there is removed, so old and new
    files are never listed together."""
    with writing_into(folder):
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / INCOMPLETE
        marker.write_text(
            "An export is being written here, or was cut short (Ctrl-C, kill, full disk, "
            "lost connection). The files beside this marker are not an export: no step of "
            "the playbook accepts them. Export again.\n")
        fsync_path(marker)
        fsync_path(folder)
        (folder / MANIFEST).unlink(missing_ok=True)


def mark_complete(folder: Path, manifest: Manifest) -> None:
    """Every file the manifest lists (CSV files, the archive) and the manifest fsynced,
    then the INCOMPLETE marker removed: from here on the export is accepted."""
    with writing_into(folder):
        names = [f.file for f in manifest.files]
        archive = manifest.extra.get("archive")
        if archive:
            names.append(archive["file"])
        for name in [*names, MANIFEST]:
            fsync_path(folder / name)
        (folder / INCOMPLETE).unlink(missing_ok=True)
        fsync_path(folder)


def mark_superseded(folder: Path, by: Path) -> None:
    """Mark an export as replaced by the one in ``by`` (it misses writes ``by`` holds)."""
    with writing_into(folder):
        marker = folder / SUPERSEDED
        marker.write_text(f"{by}\n")
        fsync_path(marker)
        fsync_path(folder)


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError that caused ``exc`` (itself, or one raised before it while a cleanup
    failed), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def writing_into(folder: Path):
    """Turn a failure to write the export (disk full, folder removed, no permission) into
    ExportFailed, saying that the database was only read."""
    try:
        yield
    except ExportMismatch:
        raise
    except BaseException as exc:
        cause = _os_error_in(exc)
        if cause is None:
            raise
        where = f" ({cause.filename})" if cause.filename else ""
        raise ExportFailed(
            f"Writing the export into {folder} failed: {cause.strerror or cause}{where}. The "
            "database was only read: nothing was dropped or changed. The files written so far "
            "are not a complete export, and no step accepts them.",
            next_step="free space on that disk (the export needs about the tables' size) or "
            "choose another export_dir, then run the export again.",
        ) from cause


def _run_exports(conn: psycopg.Connection, helpers: list[psycopg.Connection], work: list,
                 folder: Path, show_progress: bool) -> dict[int, tuple[int, int, str]]:
    """Each (index, table, COPY, file) of ``work`` exported on whichever session is free,
    the largest table first; the first failure stops the others and is raised."""
    bars = {index: progress_bar(None, str(table), show_progress) for index, table, _c, _f in work}
    results: dict[int, tuple[int, int, str]] = {}
    try:
        if not helpers:
            for index, _table, copy, file in work:
                results[index] = copy_out(conn, copy, folder / file, bars[index])
            return results
        sizes = dict(conn.execute(
            "SELECT t.i, pg_relation_size(t.name::regclass) FROM unnest(%s::int[], %s::text[]) "
            "AS t(i, name)", ([w[0] for w in work],
                              [w[1].identifier.as_string(conn) for w in work])).fetchall())
        queue = sorted(work, key=lambda w: -sizes.get(w[0], 0))
        lock, stop, failures = threading.Lock(), threading.Event(), []

        def export_on(session: psycopg.Connection) -> None:
            while not stop.is_set():
                with lock:
                    if not queue:
                        return
                    index, _table, copy, file = queue.pop(0)
                try:
                    results[index] = copy_out(session, copy, folder / file, bars[index], stop)
                except _Stopped:
                    return
                except BaseException as exc:  # noqa: BLE001 - raised again below
                    failures.append(exc)
                    stop.set()
                    return

        threads = [threading.Thread(target=export_on, args=(helper,), daemon=True)
                   for helper in helpers]
        for thread in threads:
            thread.start()
        try:
            export_on(conn)  # the snapshot's own session works in this thread
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(timeout=10)
                if not stop.is_set() and any(thread.is_alive() for thread in threads):
                    # The helpers hold the snapshot; the transaction that exported it must
                    # not end for idle_in_transaction_session_timeout while they work.
                    conn.execute("SELECT 1")
        except BaseException:  # an interrupt: stop the helpers before their sessions close
            stop.set()
            for helper in helpers:  # a helper waiting on the server would never see `stop`
                with contextlib.suppress(psycopg.Error):
                    helper.cancel_safe(timeout=5)
            for thread in threads:
                thread.join()
            raise
        if failures:
            raise failures[0]
        return results
    finally:
        for bar in bars.values():
            bar.close()


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Whole or not at all (written aside, fsynced, renamed over): never half written."""
    path, partial = folder / MANIFEST, folder / f".{MANIFEST}.partial"
    with writing_into(folder):
        partial.write_text(json.dumps(asdict(manifest), indent=2) + "\n")
        fsync_path(partial)
        os.replace(partial, path)
    return path


def require_finished(folder: Path) -> None:
    """ExportMismatch when ``folder`` holds an export cut short, or one replaced since."""
    folder = Path(folder)
    if (folder / INCOMPLETE).exists():
        raise ExportMismatch(
            f"The export in {folder} is INCOMPLETE: it was cut short while being written "
            "(Ctrl-C, a killed run, a full disk or a lost connection), so its files are not "
            "a whole export, and no step accepts them. Nothing was changed.",
            next_step="if the migration's tables still exist, run notebook 20's export again "
            "(into an empty export_dir); if they were dropped, recover from the export the "
            "drop relied on (the one its record names) or from a backup.",
        )
    if (folder / SUPERSEDED).exists():
        newer = (folder / SUPERSEDED).read_text().strip()
        raise ExportMismatch(
            f"The export in {folder} was superseded by {newer}, taken later under the "
            "drop's write lock; this one misses the writes made in between. Nothing was "
            "changed.", next_step=f"use export_dir={newer}.")


def read_manifest(folder: Path) -> Manifest:
    require_finished(folder)
    path = Path(folder) / MANIFEST
    if not path.exists():
        leftovers = sorted(p.name for p in Path(folder).glob("*.csv"))
        found = (f" The folder holds {', '.join(leftovers[:3])}"
                 f"{'...' if len(leftovers) > 3 else ''} but no manifest: an export cut "
                 "short, which no step accepts." if leftovers else "")
        raise ExportMismatch(
            f"No export manifest at {path}.{found} Nothing was changed.",
            next_step="run the export step first, or point export_dir at the folder that holds "
            "manifest.json.",
        )
    try:
        data = json.loads(path.read_text())
        files = [ExportedFile(**entry) for entry in data.pop("files")]
        return Manifest(files=files, **data)
    except (ValueError, TypeError, KeyError) as exc:
        raise ExportMismatch(
            f"The export manifest {path} is unreadable ({exc}). Nothing was changed.",
            next_step="export again; do not edit manifest.json by hand.",
        ) from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(folder: Path, manifest: Manifest | None = None) -> list[str]:
    """Problems with the export's files (missing, wrong size, wrong checksum); [] if sound."""
    manifest = manifest or read_manifest(folder)
    problems = []
    for entry in manifest.files:
        path = Path(folder) / entry.file
        if not path.exists():
            problems.append(f"{entry.file} is missing")
        elif path.stat().st_size != entry.bytes:
            problems.append(f"{entry.file} has {path.stat().st_size} bytes, manifest says "
                            f"{entry.bytes}")
        elif file_sha256(path) != entry.sha256:
            problems.append(f"{entry.file} does not match its SHA-256")
    return problems


def require_sound_export(folder: Path) -> Manifest:
    """The manifest, if every file is present and matches it; ExportMismatch otherwise."""
    manifest = read_manifest(folder)
    problems = verify_files(folder, manifest)
    if problems:
        raise ExportMismatch(
            f"The export in {folder} is damaged: {'; '.join(problems)}. Nothing was changed.",
            next_step="export again from the live data (or from a backup) before continuing.",
        )
    return manifest


# Settings that decide how values are written as text: a re-export compared with an
# export byte for byte must use the same ones.
OUTPUT_SETTINGS = ("TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits",
                   "bytea_output")


def session_settings(conn: psycopg.Connection) -> dict[str, str]:
    return {name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
            for name in OUTPUT_SETTINGS}

