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

from pathlib import Path

import psycopg

from .. import value_digest
from ..backups import dump_archive
from ..db import connecting
from ..db.names import QualifiedName
from ..errors import ExportMismatch
from ..exports import Manifest, export_tables, mark_complete, write_manifest
from ..progress import DUMPS, LoadProgress

OWN_SNAPSHOT = ("pg_dump's own: the server would not share the CSV files' snapshot, so the "
                "archive may hold writes made after them")


def export_with_archive(conn: psycopg.Connection, url: str, tables: list[QualifiedName],
                        folder: Path, *, purpose: str, extra: dict, archive: Path | None,
                        pg_dump: Path | None = None, show_progress: bool = True,
                        digests: bool = True) -> Manifest:
    """Export ``tables`` into ``folder`` as step 1 does, then mark it complete: CSV files,
    each table's value digest (``digests``) and, unless ``archive`` is None, the pg_dump
    archive at that path, all of the CSV files' snapshot when the server shares it.
    ``conn`` must not be in a transaction; ``url`` reaches pg_dump through its
    environment only."""
    major = conn.info.server_version // 10000
    found: dict[str, str] = {}
    archived: dict[str, object] = {}

    def digest(session: psycopg.Connection) -> None:
        if digests:
            found.update(value_digest.table_digests(session, tables))

    def in_snapshot(session: psycopg.Connection, snapshot: str | None) -> None:
        if archive is None:
            digest(session)
            return
        try:
            with LoadProgress(lambda: connecting.connect(url=url, purpose="archive-progress"),
                              None, f"pg_dump {archive.name}",
                              show_progress, command=DUMPS):
                archived.update(dump_archive(url, tables, archive, server_major=major,
                                             pg_dump=pg_dump, snapshot=snapshot,
                                             meanwhile=lambda: digest(session)))
            archived["snapshot"] = "the CSV files'" if snapshot else OWN_SNAPSHOT
        except ExportMismatch as exc:
            if not snapshot or "snapshot" not in str(exc):
                raise
            # pg_dump reached a server that does not know the snapshot (a pooler
            # in between): the archive is taken in its own, and the record says so.
            archived.update(dump_archive(url, tables, archive, server_major=major,
                                         pg_dump=pg_dump))
            archived["snapshot"] = OWN_SNAPSHOT

    manifest = export_tables(conn, tables, folder, purpose=purpose,
                             show_progress=show_progress, extra=extra, complete=False,
                             in_snapshot=in_snapshot if tables else None)
    for entry in manifest.files:
        entry.value_digest = found.get(entry.table, "")
    if archived:
        manifest.extra["archive"] = archived
    write_manifest(folder, manifest)
    mark_complete(folder, manifest)
    return manifest
