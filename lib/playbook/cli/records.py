"""``playbook run|incidents|timeline|inventory|rehearse``: incident records and rehearsals.

The library is imported inside each command, so `playbook --help` stays quick.
``playbook run`` exits 0 when the notebook succeeded, 1 when it stopped at a gate, failed
or died (recorded either way), 2 on bad input (nothing run, nothing recorded), and 3 when
the run ended but its record could not be written whole (a full disk): stderr then says
what COMMITted and where the outcome went.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a notebook headlessly as a record of an incident")
    _notebook_arguments(run)
    run.add_argument("--incident", required=True, help="incident id, e.g. INC-2025-014")
    run.add_argument("-f", "--parameters-file", help="YAML parameters (e.g. parameters/<nb>.yaml)")
    run.set_defaults(func=run_command)

    incidents = sub.add_parser("incidents", help="list recorded incidents and their outcome")
    incidents.set_defaults(func=incidents_command)

    timeline = sub.add_parser("timeline", help="post-mortem timeline of an incident "
                              "(Markdown + PNG, open checklist items as follow-ups)")
    timeline.add_argument("incident", help="incident id")
    timeline.set_defaults(func=timeline_command)

    inventory = sub.add_parser("inventory", help="the Rollback Script Inventory, with "
                               "'tested' from the last rehearsal")
    inventory.set_defaults(func=inventory_command)

    rehearse = sub.add_parser("rehearse", help="run a notebook in execute mode on a scratch "
                              "copy of the target, verify, drop the copy, record it")
    _notebook_arguments(rehearse)
    rehearse.set_defaults(func=rehearse_command)


def _notebook_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="notebook stem (10_rollback_sequence) or path")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="set a parameter (repeatable)")
    parser.add_argument("--operator", help="who runs it (default: $PLAYBOOK_OPERATOR or "
                        "the login name)")
    parser.add_argument("--notebooks", type=Path, help="folder holding the notebooks")


def run_command(args: argparse.Namespace) -> int:
    from .. import records

    record = records.run_notebook(
        args.notebook, args.incident, dict(args.parameter), args.parameters_file,
        operator=args.operator, notebooks_dir=args.notebooks)
    print(record.summary())
    if record.unwritten:
        # A full disk: the change may have COMMITTED even though the record is incomplete.
        print(f"playbook: {record.record_problem()}", file=sys.stderr)
    else:
        print(f"record: {record.files['notebook']} (+ .html, .json)")
    return record.exit_code


def incidents_command(args: argparse.Namespace) -> int:
    from .. import records

    table = records.list_incidents()
    _announce_deaths(table["folder"])
    if table.empty:
        print(f"no incidents recorded under {records.incidents_root()}")
        return 0
    print(table.drop(columns=["folder"]).to_string(index=False))
    return 0


def timeline_command(args: argparse.Namespace) -> int:
    from ..timeline import build_timeline

    timeline = build_timeline(args.incident)
    _announce_deaths([timeline.folder])
    print(timeline.markdown_path.read_text())
    print(f"written: {timeline.markdown_path} and {timeline.picture_path}")
    return 0


def _announce_deaths(folders) -> None:
    """Runs found killed are announced to the team (PLAYBOOK_NOTIFY) once, here."""
    from .. import notify, records

    for folder in folders:
        for sent in records.announce_deaths(Path(folder)):
            print(f"playbook: a run was found killed: {notify.summary(sent)}",
                  file=sys.stderr)


def inventory_command(args: argparse.Namespace) -> int:
    from ..inventory import inventory_markdown

    print(inventory_markdown())
    return 0


def rehearse_command(args: argparse.Namespace) -> int:
    from ..rehearsal import PASSED, rehearse

    rehearsal = rehearse(args.notebook, dict(args.parameter), operator=args.operator,
                         notebooks_dir=args.notebooks)
    print(rehearsal.summary())
    return 0 if rehearsal.outcome == PASSED else 1
