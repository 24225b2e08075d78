"""``playbook db start|stop|status|url``: the embedded throwaway PostgreSQL."""

from __future__ import annotations

import argparse

from ..localdb import DEFAULT_CLUSTER, LocalCluster


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="the embedded local PostgreSQL (throwaway)")
    actions = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, text in (
        ("start", start, "start it (initialising on first use) and print its DATABASE_URL"),
        ("stop", stop, "stop it"),
        ("status", status, "say whether it runs, where, and which PostgreSQL"),
        ("url", url, "print its DATABASE_URL"),
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
    state = _cluster(args).start()
    print(state.url())
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
