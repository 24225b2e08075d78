"""Evidence that a step was done: what a checklist item ticked by the playbook shows.

A step's result says for itself whether it shows its step done, and in a line why
(:class:`ShowsEvidence`: an ``evidence()`` method returning :class:`Evidence`). The
checklists ask that method and nothing else, so a result that cannot say is an error, not
an item silently left open. The helpers build the usual kinds of evidence: checks that
passed, an export whose files match its manifest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd

from .errors import ExportMismatch
from .exports import MANIFEST, read_manifest, verify_files
from .verification import Check


@dataclass(frozen=True)
class Evidence:
    """Whether a result shows its step done, and the line that says so."""

    done: bool
    says: str = ""


NOT_DONE = Evidence(False)


@runtime_checkable
class ShowsEvidence(Protocol):
    """A step's result that can say whether it shows its step done."""

    def evidence(self) -> Evidence: ...


def checks_evidence(checks: Iterable[Check], summary: str = "") -> Evidence:
    """Done when there are checks and every one passed ("3/3 checks passed")."""
    return _passed([c.passed for c in checks], summary)


def checks_table_evidence(frame: pd.DataFrame) -> Evidence:
    """A checks table (:func:`verification.checks_table`): its ``result`` column."""
    if "result" not in frame.columns:
        return NOT_DONE
    return _passed(list(frame["result"] == "PASS"))


def _passed(results: list[bool], summary: str = "") -> Evidence:
    if not results:
        return NOT_DONE
    passed = sum(bool(r) for r in results)
    says = f"{passed}/{len(results)} checks passed"
    return Evidence(passed == len(results), f"{summary}; {says}" if summary else says)


def export_evidence(folder: Path | str | None) -> Evidence:
    """An export folder whose files all match the SHA-256 in its manifest."""
    if not folder or not (Path(folder) / MANIFEST).is_file():
        return NOT_DONE
    try:
        manifest = read_manifest(Path(folder))
    except ExportMismatch:
        return NOT_DONE
    if verify_files(Path(folder), manifest):
        return NOT_DONE
    rows = sum(f.rows for f in manifest.files)
    return Evidence(True, f"{rows:,} rows in {len(manifest.files)} files in "
                          f"{Path(folder).name}/, each matching its SHA-256 in manifest.json")
