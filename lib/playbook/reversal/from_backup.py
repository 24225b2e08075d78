"""The state before a migration, from a backup taken before it.

The backup (a ``pg_dump`` archive, a dashboard download or the CLI's trio: anything
:mod:`supabase_dumps` restores) is restored into a scratch database: that is the state
*before*. A copy of it with the target migration applied is the state *after*. A backup that
already holds the migration's objects was taken after it: applying the migration to it fails,
and the operator is told so.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from ..backup_kinds import read_any_backup
from ..db import localdb
from ..errors import BackupUnusable, PlaybookError
from ..supabase_dumps import restore_to_scratch
from .plan import ShadowStates
from .shadow import MigrationFile, apply_sql


@contextmanager
def backup_states(backup_path: str | Path, target: MigrationFile,
                  scratch_url_env: str = "") -> Iterator[ShadowStates]:
    """The states before and after ``target``, from a backup taken before it; the scratch
    databases (and placeholder roles) are dropped afterwards."""
    backup = read_any_backup(backup_path)
    restored = restore_to_scratch(backup, scratch_url_env)
    scratch = restored.scratch
    after_name = f"{scratch.database[:40]}_after_{uuid.uuid4().hex[:6]}"
    opened: list[psycopg.Connection] = []
    try:
        localdb.create_database(scratch.server_url, after_name, template=scratch.database)
        before = psycopg.connect(scratch.url)
        after = psycopg.connect(localdb.database_url_for(scratch.server_url, after_name))
        opened += [before, after]
        try:
            apply_sql(after, target.sql(), label=target.label)
        except PlaybookError as exc:
            raise BackupUnusable(
                f"{target.label} does not apply to the backup {backup.path.name} "
                f"({exc.message}): a backup that already holds the migration was taken after "
                "it, not before. Nothing was changed.",
                next_step="choose a backup taken before the migration was deployed, or give "
                "the project's migrations folder instead.") from None
        after.commit()
        taken = (f"taken {backup.taken_at:%Y-%m-%d %H:%M} UTC, {backup.taken_at_source}"
                 if backup.taken_at else "taken at an unknown time")
        yield ShadowStates(before, after, source=(
            f"backup {backup.path.name} ({backup.kind}, {taken}) restored on "
            f"{scratch.describe()}"))
    finally:
        for conn in opened:
            conn.close()
        localdb.drop_database(scratch.server_url, after_name)
        scratch.drop()
