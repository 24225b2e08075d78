"""``playbook snapshot``: just before a deploy, the state to roll back to, with the rows the
migration can destroy (see :mod:`playbook.reversal.snapshot`)."""

from __future__ import annotations

import argparse

from ..db import localdb
from ..reversal.shadow import migration_file, read_migrations_folder
from ..reversal.snapshot import take_snapshot

DEFAULT_FOLDER = "snapshots"


def register(sub: argparse._SubParsersAction) -> None:
    snapshot = sub.add_parser(
        "snapshot", help="before a deploy: pg_dump the schema and the rows of every table the "
        "migration alters or drops (DATABASE_URL, else the embedded demo)")
    snapshot.add_argument("--migration", required=True,
                          help="the migration's .sql file, or its version with "
                          "--migrations-folder")
    snapshot.add_argument("--migrations-folder", default="",
                          help="the project's supabase/migrations folder")
    snapshot.add_argument("--folder", default=DEFAULT_FOLDER, help="where snapshots go")
    snapshot.set_defaults(func=snapshot_command)


def snapshot_command(args: argparse.Namespace) -> int:
    if args.migrations_folder:
        target = read_migrations_folder(args.migrations_folder).find(args.migration)
    else:
        target = migration_file(args.migration)
    backup, tables = take_snapshot(localdb.target_url(), target, args.folder)
    print(f"{backup.path}  taken {backup.as_row()['taken at (UTC)']} UTC  {backup.size:,} bytes")
    print(f"rows kept for {len(tables)} table(s) {target.label} changes: "
          + (", ".join(str(t) for t in tables) or "none (it only adds)"))
    print(f"to roll {target.label} back later from this snapshot: notebook 20 with "
          f"-p migration {target.path} -p backup {backup.path}")
    return 0
