"""What a run leaves as it goes: a journal of its moments, beside its record.

``playbook run`` gives each run a journal, ``<NN>-<notebook>.journal.jsonl`` beside its
record, named to the kernel in ``$PLAYBOOK_RUN_JOURNAL``. One JSON object per line,
appended (never rewritten) the moment it happens:

- ``cell``: a cell is starting (written by ``playbook run`` before the kernel runs it);
- ``gate``: a gate was answered, open or closed;
- ``export verified``: an export matched its manifest;
- ``committed``: a change COMMITted, with the objects and rows it affected;
- ``verification``: the checks after a change passed or failed;
- ``notification``: a notification was sent, or could not be;
- ``death announced``: the team was told of a run found killed (``records.announce_deaths``).

A run that ended without finishing gets a ``died`` moment in its record, at its last cell.

So a run killed with ``kill -9`` or whose kernel died still leaves what it did and where it
was. When the journal cannot be written (a disk that filled up after the COMMIT), the
moment is shown in the notebook as an output instead (``application/json`` under
:data:`MOMENT_KEY`), which ``playbook run`` holds in memory and reads back.

Writing a moment never raises: a full disk must not stop a rollback half-way.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

JOURNAL_ENV = "PLAYBOOK_RUN_JOURNAL"
MOMENT_KEY = "playbook_moment"
SUFFIX = ".journal.jsonl"

CELL, GATE, EXPORT_VERIFIED, COMMITTED = "cell", "gate", "export verified", "committed"
VERIFICATION, NOTIFICATION, DIED = "verification", "notification", "died"

# Moments of this process (a JupyterLab kernel has no journal file: the gate's evidence
# and the notebook's own outputs are what it keeps).
_KEPT: list[dict] = []
_CURRENT_RUN: list = []


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def path_for(record_path: Path) -> Path:
    """The journal beside a record (``03-20_x.json`` -> ``03-20_x.journal.jsonl``)."""
    return Path(record_path).with_suffix(SUFFIX)


def append(path: Path | str | None, entry: Mapping) -> bool:
    """Append one line to the journal at ``path``; False (never an exception) when it
    cannot be written (a full disk, a folder removed)."""
    if not path:
        return False
    line = (json.dumps(dict(entry), default=str) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
        finally:
            os.close(fd)
        return written == len(line)
    except OSError:
        return False


def read(path: Path | str | None) -> list[dict]:
    """Every complete line of a journal (a line cut off by a crash is left out)."""
    if not path or not Path(path).is_file():
        return []
    entries = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def journal_path() -> Path | None:
    """This kernel's journal (set by ``playbook run``), or None."""
    value = os.environ.get(JOURNAL_ENV, "")
    return Path(value) if value else None


def record_path() -> Path | None:
    """The executed notebook this kernel's run will be recorded as, when known."""
    journal = journal_path()
    if journal is None:
        return None
    return journal.with_name(journal.name[: -len(SUFFIX)] + ".ipynb")


# --- the run in progress --------------------------------------------------------------


def begin(run) -> None:
    """Remember the notebook run in progress (called by ``runs.begin_run``)."""
    _CURRENT_RUN[:] = [run]


def current_run():
    return _CURRENT_RUN[0] if _CURRENT_RUN else None


def moment(kind: str, text: str, *, show: bool = False, **data: object) -> dict:
    """Record a moment of the run: in the journal and in this process. It is also shown
    as an output of the cell when ``show`` is set, or when the journal could not be
    written (a full disk): ``playbook run`` then reads it from the executed notebook it
    holds in memory. Returns the entry."""
    entry = {"id": uuid.uuid4().hex, "at": now(), "event": kind, "text": text, **data}
    run = current_run()
    if run is not None:
        entry.setdefault("notebook", run.notebook)
        entry.setdefault("incident", run.incident_id)
    journal = journal_path()
    journalled = append(journal, entry)
    _KEPT.append(entry)
    if show or (journal is not None and not journalled):
        _show(entry)
    return entry


def kept() -> list[dict]:
    return list(_KEPT)


def _show(entry: Mapping) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return
    if get_ipython() is None:
        return
    display({"application/json": {MOMENT_KEY: dict(entry)},
             "text/plain": f"[{entry['event']}] {entry['text']}"}, raw=True)


def json_outputs(notebook: Mapping, key: str) -> list[dict]:
    """What an executed notebook's cells displayed as ``application/json`` under ``key``
    (the playbook's way of leaving structured facts in a record)."""
    found = []
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get("application/json")
            if isinstance(data, Mapping) and key in data:
                found.append(dict(data[key]))
    return found


def moments_in(notebook: Mapping) -> list[dict]:
    """The moments shown in an executed notebook's outputs."""
    return json_outputs(notebook, MOMENT_KEY)


def merged(*sources: Iterable[Mapping]) -> list[dict]:
    """Moments from several sources (journal, notebook outputs), each once, by time."""
    seen: dict[str, dict] = {}
    for source in sources:
        for entry in source:
            key = str(entry.get("id") or json.dumps(entry, sort_keys=True, default=str))
            seen.setdefault(key, dict(entry))
    return sorted(seen.values(), key=lambda e: str(e.get("at", "")))


# --- the moments the steps mark -------------------------------------------------------


def committed(what: str, objects: Iterable[str] = (), rows: Mapping[str, int] | None = None,
              detail: str = "") -> dict:
    """A change COMMITted: ``what`` in the operator's words ("the drop"), the objects it
    affected and the rows per table. Journalled first, then the team is notified."""
    from . import notify

    objects = [str(o) for o in objects]
    rows = {str(k): int(v) for k, v in (rows or {}).items()}
    text = f"{what} COMMITTED"
    if objects:
        text += f": {', '.join(objects)}"
    if rows:
        text += f" ({', '.join(f'{t}: {n:,} rows' for t, n in rows.items())})"
    if detail:
        text += f"; {detail}"
    entry = moment(COMMITTED, text, what=what, objects=objects, rows=rows)
    run = current_run()
    if run is not None:
        notify.notify_run(run, notify.COMMITTED, text)
    return entry


def commits_in(entries: Iterable[Mapping]) -> list[dict]:
    return [dict(e) for e in entries if e.get("event") == COMMITTED]


def describe_commits(entries: Iterable[Mapping]) -> str:
    """``the drop`` / ``the drop and the recovery``: what COMMITted, for a message."""
    names = list(dict.fromkeys(str(e.get("what") or "a change") for e in commits_in(entries)))
    if not names:
        return ""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
