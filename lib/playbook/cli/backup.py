"""``playbook backup take|list``: pg_dump custom-format archives of any database (the
demo included), so the full-restore path can be rehearsed locally."""

from __future__ import annotations

import argparse

from .. import backups
from ..db import localdb

DEFAULT_FOLDER = "backups"


def register(sub: argparse._SubParsersAction) -> None:
    backup = sub.add_parser("backup", help="take and list backups (pg_dump archives)")
    actions = backup.add_subparsers(dest="action", required=True, metavar="ACTION")
    take = actions.add_parser("take", help="pg_dump -Fc the target (DATABASE_URL, else the "
                              "embedded demo) into a file named with the UTC time")
    take.add_argument("--folder", default=DEFAULT_FOLDER, help="where backups go")
    take.set_defaults(func=take_command)
    listing = actions.add_parser("list", help="backups in a folder, with the time each was "
                                 "taken (from the archive itself) and its size")
    listing.add_argument("--folder", default=DEFAULT_FOLDER)
    listing.set_defaults(func=list_command)


def take_command(args: argparse.Namespace) -> int:
    backup = backups.take_backup(localdb.target_url(), args.folder)
    print(f"{backup.path}  taken {backup.as_row()['taken at (UTC)']} UTC  "
          f"{backup.size:,} bytes  database {backup.database}  PostgreSQL {backup.server_version}")
    return 0


def list_command(args: argparse.Namespace) -> int:
    found = backups.list_backups(args.folder)
    if not found:
        print(f"no backups in {args.folder}")
        return 0
    print(backups.backups_table(found).to_string(index=False))
    return 0
