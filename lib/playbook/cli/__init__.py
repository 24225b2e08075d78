"""The ``playbook`` command: one small module per command group, all calling down into
the library. Errors the operator can act on are printed as one sentence (no traceback)
and exit with code 2."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from ..errors import PlaybookError

# Each module has ``register(subparsers)``; its parsers set ``func(args) -> int``.
COMMAND_MODULES = ("db", "demo", "lab", "backup", "records", "locks", "snapshot")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playbook",
        description="Rollback playbook for PostgreSQL (Supabase): run, check and record.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PlaybookError as exc:
        print(f"playbook: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("playbook: interrupted; see the record for where it stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
