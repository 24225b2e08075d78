"""Step 1's export: the CSV files, their values' digests and a pg_dump archive, of one moment.

:func:`exports.export_tables` writes the CSV files (rows, SHA-256) on up to two sessions in
one snapshot. Still in that snapshot, ``pg_dump --snapshot`` then writes the custom-format
archive of the same tables while the export's session digests each table's values
(:mod:`value_digest`), which the recovery's proof compares with the re-imported rows. The
digest runs beside pg_dump, whose own work is mostly compressing on the client, so it
adds next to nothing to the step; it is kept out of the CSV export itself (there it made
the export slower than ``psql \\copy``, issue 14's bound).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg

from .. import value_digest
from ..backups import dump_archive
from ..db import connecting
from ..db.names import QualifiedName
from ..errors import ExportMismatch
from ..exports import Manifest, export_tables, mark_complete, write_manifest
from ..progress import DUMPS, LoadProgress

OWN_SNAPSHOT = "pg_dump's own, taken after the CSV files' (it could not share theirs: {})"


def export_with_archive(connect: Callable[[], psycopg.Connection], url: str,
                        tables: list[QualifiedName], folder: Path, *, purpose: str,
                        extra: dict, archive: Path | None, pg_dump: Path | None = None,
                        show_progress: bool = True, digests: bool = True) -> Manifest:
    """Export ``tables`` into ``folder`` as step 1 does, then mark it complete: CSV files,
    each table's value digest (``digests``) and, unless ``archive`` is None, the pg_dump
    archive at that path, all of the CSV files' snapshot when the server shares it.
    ``connect()`` opens the export's session (closed before a second attempt at the
    archive, which then needs one connection slot only); ``url`` reaches pg_dump
    through its environment only."""
    found: dict[str, str] = {}
    archived: dict[str, object] = {}
    refused: list[str] = []  # why pg_dump could not dump the CSV files' snapshot

    def digest(session: psycopg.Connection) -> None:
        if digests:
            found.update(value_digest.table_digests(session, tables))

    def in_snapshot(session: psycopg.Connection, snapshot: str | None) -> None:
        if archive is None:
            digest(session)
            return
        try:
            with LoadProgress(lambda: connecting.connect(url=url, purpose="archive-progress"),
                              None, f"pg_dump {archive.name}", show_progress,
                              command=DUMPS):
                archived.update(dump_archive(url, tables, archive, server_major=major,
                                             pg_dump=pg_dump, snapshot=snapshot,
                                             meanwhile=lambda: digest(session)))
        except ExportMismatch as exc:
            # No connection slot beside the export's session, or a pooler in between
            # that does not know the snapshot: again once the session is closed.
            refused.append(exc.message[:300])
            return
        archived["snapshot"] = ("the CSV files'" if snapshot else OWN_SNAPSHOT.format(
            "the server would not export it"))

    with connect() as conn:
        major = conn.info.server_version // 10000
        manifest = export_tables(conn, tables, folder, purpose=purpose,
                                 show_progress=show_progress, extra=extra, complete=False,
                                 in_snapshot=in_snapshot if tables else None)
    if refused:
        archived.update(dump_archive(url, tables, archive, server_major=major,
                                     pg_dump=pg_dump))
        archived["snapshot"] = OWN_SNAPSHOT.format(refused[0])
    for entry in manifest.files:
        entry.value_digest = found.get(entry.table, "")
    if archived:
        manifest.extra["archive"] = archived
    write_manifest(folder, manifest)
    mark_complete(folder, manifest)
    return manifest
