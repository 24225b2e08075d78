"""``playbook locks [--end PID]``: who holds the playbook's lock or its tables' locks on
the target, and, asked by pid, end one of the playbook's own sessions a killed run left
behind (never the application's)."""

from __future__ import annotations

import argparse

from ..db import connecting, localdb
from ..db.locks import end_stale_backend, lock_holders


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "locks", help="sessions holding the playbook's lock or table locks on the target; "
        "--end PID ends one of the playbook's own (a killed run's orphan)")
    parser.add_argument("--end", type=int, metavar="PID", default=None,
                        help="end this session, only if its application_name is playbook:...")
    parser.add_argument("--database-url-env", default=connecting.DEFAULT_URL_ENV,
                        help="environment variable naming the target (default DATABASE_URL)")
    parser.set_defaults(func=locks)


def locks(args: argparse.Namespace) -> int:
    url = localdb.target_url(args.database_url_env, start=False)
    with connecting.connect(url=url, purpose="locks", autocommit=True) as conn:
        print(f"target: {connecting.summary(url)}")
        if args.end is not None:
            ended = end_stale_backend(conn, args.end)
            print(f"ended {ended.describe()}; its transaction was "
                  "rolled back by the server and its locks released.")
            return 0
        holders = lock_holders(conn)
        for holder in holders:
            mark = "  (the playbook's own: `playbook locks --end " \
                f"{holder.pid}` ends it)" if holder.is_playbooks_own else ""
            print(f"{holder.describe()}{mark}")
        if not holders:
            print("no other session holds the playbook's lock or a lock on a table.")
    return 0
