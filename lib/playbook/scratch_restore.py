"""*Backup has been tested and can be restored*: a pg_dump archive restored into a scratch
database (never the target) and compared with the archive, table by table, with the
table grants a full restore gives back."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
import psycopg

from .backups import (
    Backup,
    archive_counts,
    require_tools_for,
    restore_error,
    run_tool,
    server_major_of,
)
from .db import connecting, localdb
from .db.names import QualifiedName
from .errors import BackupUnusable, PlaybookError
from .evidence import Evidence
from .progress import LoadProgress


@dataclass
class TestRestore:
    """A scratch restore of a backup: where, how long, and the counts found there."""

    backup: Backup
    database: str
    seconds: float
    counts: dict[str, int]
    archive_counts: dict[str, int]
    kept: bool
    privileges: list[tuple[str, str, str]] = field(default_factory=list)

    __test__ = False  # not a pytest test class

    @property
    def passed(self) -> bool:
        return self.counts == self.archive_counts

    def table(self) -> pd.DataFrame:
        names = sorted(set(self.counts) | set(self.archive_counts))
        return pd.DataFrame(
            [{"table": n, "rows restored": self.counts.get(n), "rows in archive":
              self.archive_counts.get(n),
              "result": "PASS" if self.counts.get(n) == self.archive_counts.get(n) else "FAIL"}
             for n in names], columns=["table", "rows restored", "rows in archive", "result"])

    def evidence(self) -> Evidence:
        return Evidence(self.passed, self.in_words())

    def in_words(self) -> str:
        total = sum(self.counts.values())
        return (f"restored into scratch database {self.database!r} in {self.seconds:.1f}s: "
                f"{len(self.counts)} tables, {total:,} rows, "
                + ("all equal to the archive" if self.passed else "NOT equal to the archive"))


def scratch_server_url(scratch_url_env: str = "", target_url: str = "") -> str:
    """Where scratch databases go: the server named by ``scratch_url_env`` if given, else
    the target's own server (a new database beside it, never the target itself), else
    the embedded cluster."""
    if scratch_url_env:
        return connecting.database_url(scratch_url_env)
    if target_url:
        return target_url
    return localdb.target_url()


def user_table_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row counts of every user table that holds rows itself (the verification's
    view of a database): partitions each on their own, partitioned parents left out."""
    from psycopg import sql

    tables = conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'
        ORDER BY 1, 2
        """
    ).fetchall()
    # ONLY, and no partitioned parents: an archive holds a partition's rows in that
    # partition's data block and none for the parent (every Supabase database has the
    # partitioned realtime.messages), so each row is counted once, where the archive has it.
    return {
        str(QualifiedName(s, t)): conn.execute(
            sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(s, t))).fetchone()[0]
        for s, t in tables
    }


def table_privileges(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """(table, grantee, privilege) for every grant on a user table or sequence: the
    application's grants, to compare before/after a restore."""
    rows = conn.execute(
        """
        SELECT format('%%I.%%I', n.nspname, c.relname),
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
               a.privilege_type
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
             LATERAL aclexplode(c.relacl) a
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND a.grantee <> c.relowner
        ORDER BY 1, 2, 3
        """
    ).fetchall()
    return [tuple(r) for r in rows]


def test_restore(backup: Backup, scratch_url: str, *, jobs: int = 2, keep: bool = False,
                 name: str = "", show_progress: bool = False) -> TestRestore:
    """Restore ``backup`` into a new scratch database on ``scratch_url``'s server, count
    every table, compare with the archive's own counts; drop the scratch database unless
    ``keep``. Never touches any other database."""
    if not backup.usable:
        raise BackupUnusable(f"The backup {backup.path.name} is not usable: {backup.problem}.")
    major = server_major_of(scratch_url)
    pg_restore = require_tools_for(backup, major)
    scratch = name or f"playbook_scratch_{datetime.now(UTC):%Y%m%d%H%M%S}_{os.getpid()}"
    scratch_url_db = localdb.create_database(scratch_url, scratch, template="template0")
    try:
        started = time.perf_counter()
        with LoadProgress(lambda: connecting.connect(url=scratch_url_db,
                                                     purpose="test-restore-progress"),
                          None, f"test restore {backup.path.name}", show_progress):
            result = run_tool(pg_restore, ["--no-password", f"--jobs={max(1, jobs)}",
                                           "--exit-on-error", f"--dbname={scratch}",
                                           str(backup.path)], url=scratch_url_db)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise BackupUnusable(
                f"The test restore of {backup.path.name} into the scratch database {scratch!r} "
                f"failed: {restore_error(result.stderr)}. The target database was not touched.",
                next_step="the archive reads to its end (proven above), so the failure is the "
                "scratch server's: if the error names an extension, role or function, point "
                "scratch_url_env at a server like production (same major version, the same "
                "extensions, e.g. a Supabase local stack or Debian's postgresql with contrib); "
                "otherwise choose another backup.",
            )
        with connecting.connect(url=scratch_url_db, purpose="test-restore",
                                read_only=True) as conn:
            counts = user_table_counts(conn)
            privileges = table_privileges(conn)
        expected = archive_counts(backup)
    except PlaybookError:
        localdb.drop_database(scratch_url, scratch)
        raise
    if not keep:
        localdb.drop_database(scratch_url, scratch)
    return TestRestore(backup, scratch, seconds, counts, expected, keep, privileges)


def prove_restorable(backup: Backup, scratch_url: str, *, jobs: int = 2,
                     show_progress: bool = False) -> TestRestore:
    """:func:`test_restore`, refused (BackupUnusable) unless every count equals the
    archive's."""
    restored = test_restore(backup, scratch_url, jobs=jobs, show_progress=show_progress)
    if not restored.passed:
        raise BackupUnusable(
            f"The test restore of {backup.path.name} does not match the archive: "
            f"{restored.in_words()}. Nothing was changed on the target.",
            next_step="choose another backup.",
        )
    return restored


test_restore.__test__ = False  # a playbook step, not a pytest test
