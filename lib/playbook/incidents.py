"""Where an incident's files go: one folder per incident, found again by every step.

``incidents/<YYYY-MM-DD>-<ID>/`` holds the incident's records (``records``), its timeline,
and under ``exports/<what>/`` every export a notebook wrote for it (the coaching tables'
CSV files, the rows written after a backup, a surgical restore's diff), so an export is
always beside the record of the run that wrote it.

The root is ``$PLAYBOOK_INCIDENTS``, else ``incidents/`` in the project folder (the
nearest folder above the working directory holding ``pyproject.toml`` and
``notebooks/``), else ``incidents/`` in the working directory: JupyterLab runs a notebook
inside ``notebooks/``, papermill and ``playbook run`` wherever they are started, and all
of them land in the same place.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

from .errors import ConfigurationError, ObjectNotFound
from .project import project_root

_INCIDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FOLDER_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})-(.+)")


def incidents_root() -> Path:
    """``$PLAYBOOK_INCIDENTS``, else ``incidents/`` in the project folder, else in the
    working directory."""
    if os.environ.get("PLAYBOOK_INCIDENTS"):
        return Path(os.environ["PLAYBOOK_INCIDENTS"]).expanduser().resolve()
    return (project_root() or Path.cwd().resolve()) / "incidents"


def require_incident_id(incident_id: str) -> str:
    if not isinstance(incident_id, str) or not _INCIDENT_ID.fullmatch(incident_id):
        raise ConfigurationError(
            f"The incident id must be letters, digits, '.', '_' or '-' (at most 64), got "
            f"{incident_id!r}. Nothing was run or changed.",
            next_step="pass e.g. --incident INC-2025-014.",
        )
    return incident_id


def run_label(started_at: datetime | None = None) -> str:
    """What stands for the incident id of a run given none: its UTC start time."""
    return (started_at or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def find_incident(incident_id: str, root: Path | None = None) -> Path | None:
    """The folder of ``incident_id`` (the latest if it spans several dates), or None."""
    require_incident_id(incident_id)
    root = root or incidents_root()
    if not root.is_dir():
        return None
    matches = sorted(
        p for p in root.iterdir()
        if p.is_dir() and (m := FOLDER_NAME.fullmatch(p.name)) and m.group(2) == incident_id
    )
    return matches[-1] if matches else None


def incident_folder(incident_id: str = "", root: Path | None = None, *,
                    started_at: datetime | None = None, create: bool = True) -> Path:
    """The incident's folder: found again if it exists, else ``<today>-<ID>`` (created
    unless ``create`` is False). Without an incident id, a folder named after the run's
    UTC start time (``started_at``, else now)."""
    if not incident_id:
        moment = (started_at or datetime.now(UTC)).astimezone(UTC)
        incident_id, today = run_label(moment), moment
    else:
        today = datetime.now(UTC)
    folder = find_incident(incident_id, root)
    if folder is None:
        folder = (root or incidents_root()) / f"{today:%Y-%m-%d}-{incident_id}"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def require_incident(incident_id: str, root: Path | None = None) -> Path:
    found = find_incident(incident_id, root)
    if found is None:
        raise ObjectNotFound(
            f"No records of incident {incident_id!r} under {root or incidents_root()}.",
            next_step="`playbook incidents` lists the incidents recorded here "
            "(PLAYBOOK_INCIDENTS sets where they are kept).",
        )
    return found


def exports_folder(incident_id: str, what: str, *, started_at: datetime | None = None,
                   root: Path | None = None) -> Path:
    """``<incident folder>/exports/<what>``: where a notebook's export for the incident
    goes. Nothing is created here; the export creates its folder when it writes."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(what)).strip(".")
    if not safe:
        raise ConfigurationError(f"An export needs a folder name, got {what!r}. Nothing was "
                                 "changed.", next_step="report this as a bug in the playbook.")
    folder = incident_folder(incident_id, root, started_at=started_at, create=False)
    return folder / "exports" / safe


def export_folder(export_dir: str | Path, incident_id: str, what: str, *,
                  started_at: datetime | None = None) -> Path:
    """The one meaning of every notebook's ``export_dir`` parameter: given, it is the folder
    the notebook's export goes into (or, for a recovery, is read from); empty, the
    incident's ``exports/<what>`` beside its records (:func:`exports_folder`)."""
    if str(export_dir or "").strip():
        return Path(export_dir).expanduser().resolve()
    return exports_folder(incident_id.strip(), what, started_at=started_at)
