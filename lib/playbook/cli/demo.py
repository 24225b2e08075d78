"""``playbook demo load|break``: the demo application behind the procedure document."""

from __future__ import annotations

import argparse
import time

from .. import demo_app
from ..db import connecting, localdb


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the demo application database")
    actions = demo.add_subparsers(dest="action", required=True, metavar="ACTION")

    load = actions.add_parser("load", help="create the demo application, its coaching "
                              "migration and deterministic sample data")
    load.add_argument("--rows", type=int, default=200,
                      help="number of chat messages (other tables scale from it)")
    load.add_argument("--fresh", action="store_true",
                      help="on the embedded server only: drop and recreate the demo database")
    load.set_defaults(func=load_command)

    run = actions.add_parser("run", help="the main job: a fresh demo database, then the whole "
                             "playbook run headlessly, leaving incident records")
    run.add_argument("--rows", type=int, default=2000,
                     help="number of chat messages in the demo database")
    run.add_argument("--incident", default="", help="incident id (default: demo-<time>)")
    run.set_defaults(func=run_command)

    brk = actions.add_parser("break", help="simulate an incident")
    brk.add_argument("kind", choices=sorted(demo_app.SIMULATORS),
                     help="; ".join(f"{k}: {v}" for k, v in sorted(demo_app.SIMULATORS.items())))
    brk.set_defaults(func=break_command)


def load_command(args: argparse.Namespace) -> int:
    url = localdb.target_url()
    if args.fresh:
        if localdb.target_is_given():
            print("playbook: --fresh only applies to the embedded server; refusing to drop a "
                  "database named by DATABASE_URL.")
            return 2
        localdb.create_database(url, localdb.DEFAULT_DATABASE, replace=True)
    started = time.perf_counter()
    with connecting.session(url=url, purpose="demo-load",
                            limits=connecting.SessionLimits(statement_timeout="0")) as conn:
        demo_app.create_application(conn)
        demo_app.apply_coaching_migration(conn)
        counts = demo_app.load_sample_data(conn, rows=args.rows)
        conn.commit()
    print(f"demo loaded into {connecting.summary(url)} in {time.perf_counter() - started:.1f}s")
    for table_name, count in counts.items():
        print(f"  {table_name:<32} {count:>10,}")
    return 0


def break_command(args: argparse.Namespace) -> int:
    url = localdb.target_url()
    with connecting.session(url=url, purpose="demo-break") as conn:
        described = demo_app.break_application(conn, args.kind)
        conn.commit()
    print(f"{args.kind}: {described}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    from ..demo_run import run_demo  # papermill and nbconvert load only for this command

    return run_demo(rows=args.rows, incident_id=args.incident)
