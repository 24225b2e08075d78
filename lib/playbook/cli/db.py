"""``playbook db start|stop|status|url``: the embedded throwaway PostgreSQL."""

from __future__ import annotations

import argparse
import sys

from ..db import connecting
from ..db.localdb import DEFAULT_CLUSTER, LocalCluster


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="the embedded local PostgreSQL (throwaway)")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, text in (
        ("start", start, "start it (initialising on first use); says where, never the password"),
        ("stop", stop, "stop it"),
        ("status", status, "say whether it runs, where, and which PostgreSQL"),
        ("url", url, "print its DATABASE_URL, password included (for `export`)"),
        ("destroy", destroy, "stop it and delete its files"),
    ):
        parser = actions.add_parser(name, help=text)
        parser.add_argument("--cluster", default=DEFAULT_CLUSTER, help="cluster name")
        parser.add_argument("--pg-major", type=int, default=None,
                            help="PostgreSQL major version to use on first start (15, 16)")
        parser.set_defaults(func=func)


def _cluster(args: argparse.Namespace) -> LocalCluster:
    return LocalCluster(args.cluster, major=args.pg_major)


def start(args: argparse.Namespace) -> int:
    """Start and say where it listens, without the password (a terminal's scrollback and
    a CI log are not places for it): ``playbook db url`` prints the full URL."""
    cluster = _cluster(args)
    state = cluster.start()
    option = "" if state.name == DEFAULT_CLUSTER else f" --cluster {state.name}"
    export = f'export DATABASE_URL="$(playbook db url{option})"'
    if cluster.moved_from_port is not None:
        print(f"playbook: WARNING: port {cluster.moved_from_port} of the cluster "
              f"'{state.name}' is taken by another program; the cluster now listens on "
              f"{state.port}. A DATABASE_URL exported earlier names port "
              f"{cluster.moved_from_port} and is STALE: export it again ({export}).",
              file=sys.stderr)
    print(f"running: {connecting.redact(state.url(), state.url())} "
          f"(PostgreSQL {state.major}, cluster '{state.name}', port {state.port})")
    print(f"The password is in {cluster.state_file} (mode 0600); to use the cluster:")
    print(f"  {export}")
    return 0


def url(args: argparse.Namespace) -> int:
    state = _cluster(args).state()
    if state is None:
        print("playbook: the embedded cluster was never started; run `playbook db start`.")
        return 2
    print(state.url())
    return 0


def stop(args: argparse.Namespace) -> int:
    print("stopped" if _cluster(args).stop() else "not running")
    return 0


def status(args: argparse.Namespace) -> int:
    for key, value in _cluster(args).status().items():
        print(f"{key:>10}: {value}")
    return 0


def destroy(args: argparse.Namespace) -> int:
    _cluster(args).destroy()
    print("destroyed")
    return 0
