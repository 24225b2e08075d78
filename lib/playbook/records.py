"""Incident records: every notebook run, kept as the executed notebook, an HTML copy and a
small JSON saying who ran it, when, with which parameters, and how it ended.

``run_notebook("20_rollback_coaching_tables", "INC-42", {...})`` runs the notebook with
papermill into ``incidents/<YYYY-MM-DD>-INC-42/<NN>-20_rollback_coaching_tables.ipynb``
(NN: the run's order within the incident) with ``.html`` and ``.json`` beside it. A run
that stops at a gate or fails is recorded the same way, with the cell where it stopped
and why.

Secrets: the connection string is never a parameter (a value that looks like one, or
holds the live password, is refused before the run). papermill executes into memory,
not onto disk; every string of the executed notebook is scrubbed with
:func:`connecting.redact` before anything is written, and a file that would still hold
the live password is not written at all (:class:`RecordRefused`).

A run leaves a journal as it goes (:mod:`playbook.journal`): the cell it is starting,
written before the kernel runs it, and the moments its steps mark (a COMMIT with what it
changed). A run killed with ``kill -9`` or whose kernel died is read back as *died*, with
the last cell started and when. Before a run starts, room for its outcome is reserved
beside the record; when the disk fills up during the run, that outcome is written first
(into the reserved room, to a temporary file renamed into place, so no file is ever left
cut off), then the rest as far as it fits; what could not be written is said on stderr,
in a second place (``$XDG_STATE_HOME/playbook/records``, else ``/tmp``) and in the exit
status (:data:`RECORD_INCOMPLETE`), naming what COMMITted.

Where the incident folders are (and their exports) is :mod:`playbook.incidents`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import os
import re
import socket
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pandas as pd
import papermill

from . import journal, notify
from .db import connecting
from .errors import ConfigurationError, PreconditionFailed
from .incidents import FOLDER_NAME as _FOLDER
from .incidents import incident_folder, incidents_root, require_incident_id
from .kernels import LocalSocketKernelManager
from .papermill_memory import MEMORY, CellJournal, step_of
from .parameters import (
    check_parameters,
    coerce,
    declared_parameters,
    load_parameter_file,
    resolve_notebook,
)
from .scrubbing import live_secrets, scrub, write_scrubbed

SUCCEEDED, STOPPED, FAILED, DIED = "succeeded", "stopped at a gate", "failed", "died"
# Exit status of `playbook run` when the run ended but its record could not be written
# whole (a full disk): the message says what COMMITted and where the outcome went.
RECORD_INCOMPLETE = 3
# Room kept free beside the record for its outcome, whatever fills the disk meanwhile.
RESERVE_BYTES = 256 * 1024
GATE_EXCEPTIONS = {"GateClosed"}
RECORD_METADATA_KEY = "playbook_record"
# A connection string with an inline password, in either libpq form.


# --- which notebook, which parameters ---------------------------------------------------




# --- the record ---------------------------------------------------------------------------


@dataclass
class Record:
    """One run of one notebook within an incident."""

    incident_id: str
    number: int
    notebook: str
    operator: str
    started_at: str
    ended_at: str = ""
    parameters: dict = field(default_factory=dict)
    outcome: str = ""
    where: dict | None = None
    why: str = ""
    target: str = ""
    files: dict = field(default_factory=dict)
    mode: str = ""
    # What the run's steps marked as they went (journal.moment): gates, exports verified,
    # COMMITs with what they changed, verifications, notifications.
    moments: list = field(default_factory=list)
    notifications: list = field(default_factory=list)
    # The files of the record that could not be written (name -> why), and where the
    # outcome went instead.
    unwritten: dict = field(default_factory=dict)
    fallback: str = ""

    @property
    def committed(self) -> list[dict]:
        return journal.commits_in(self.moments or [])

    @property
    def exit_code(self) -> int:
        if self.unwritten:
            return RECORD_INCOMPLETE
        return 0 if self.outcome == SUCCEEDED else 1

    def record_problem(self) -> str:
        """What the operator must hear when the record could not be written whole."""
        if not self.unwritten:
            return ""
        what = journal.describe_commits(self.moments or [])
        head = f"{what} COMMITTED" if what else "nothing was committed by this run"
        reasons = "; ".join(f"{name}: {why}" for name, why in self.unwritten.items())
        where = (f"The outcome is in {self.fallback}" if self.fallback
                 else f"The outcome is in {self.files.get('record')}")
        return (f"{head}; the record could not be written ({reasons}). {where}. "
                f"The run itself {self.outcome}.")

    @property
    def folder(self) -> Path:
        return Path(self.files["record"]).parent

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        text = f"{self.number:02d}-{self.notebook}: {self.outcome}"
        if self.where:
            text += f" at cell {self.where.get('cell')} ({self.where.get('step')})"
        if self.why:
            text += f": {self.why}"
        what = journal.describe_commits(self.moments or [])
        if what and self.outcome != SUCCEEDED:
            text += f" ({what} COMMITTED)"
        return text


def _claim_number(folder: Path, stem: str, stub: Mapping | None = None) -> tuple[int, Path]:
    """The next NN in ``folder``, claimed by creating its JSON exclusively (two runs
    started at once get different numbers). The JSON says the run is running, who runs
    it and from which process, until the run's outcome replaces it."""
    while True:
        taken = [int(m.group(1)) for p in folder.glob("*.json")
                 if (m := re.match(r"(\d+)-", p.name))]
        number = max(taken, default=0) + 1
        path = folder / f"{number:02d}-{stem}.json"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({"status": "running", "number": number, **(stub or {})}, handle)
        return number, path


def where_it_stopped(nb: nbformat.NotebookNode) -> tuple[dict | None, str, str]:
    """(where, exception name, message) of the first cell that raised, or (None, "", "")."""
    cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    for index, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                source = cell.get("source", "").strip().splitlines()
                return (
                    {"cell": index, "execution_count": cell.get("execution_count"),
                     "step": step_of(cells, index), "source": source[0] if source else ""},
                    output.get("ename", ""),
                    output.get("evalue", ""),
                )
    return None, "", ""


def run_notebook(
    stem: str,
    incident_id: str,
    parameters: Mapping[str, object] | None = None,
    parameter_file: Path | str | None = None,
    operator: str | None = None,
    *,
    notebooks_dir: Path | None = None,
    root: Path | None = None,
    folder: Path | None = None,
    cwd: Path | None = None,
) -> Record:
    """Run ``notebooks/<stem>.ipynb`` with papermill as a numbered record of the incident.

    Bad input (unknown notebook or parameter, a connection string as a value, a bad
    incident id) raises before anything runs; a run that stops at a gate or fails is
    recorded and returned with its outcome (``Record.exit_code`` is 1 then).
    """
    require_incident_id(incident_id)
    path = resolve_notebook(stem, notebooks_dir)
    declared = declared_parameters(path)
    merged = dict(load_parameter_file(parameter_file))
    merged.update({k: coerce(v, declared.get(k)) for k, v in (parameters or {}).items()})
    operator = operator or os.environ.get("PLAYBOOK_OPERATOR") or getpass.getuser()
    for name, value in (("incident_id", incident_id), ("operator", operator)):
        if name in declared:
            merged[name] = value
    env_name = str(merged.get("database_url_env") or connecting.DEFAULT_URL_ENV)
    secrets = live_secrets([env_name])
    check_parameters(merged, declared, path.stem, secrets)
    try:
        target = connecting.summary(connecting.database_url(env_name))
    except ConfigurationError:
        target = "(no connection configured)"

    folder = folder or incident_folder(incident_id, root)
    folder.mkdir(parents=True, exist_ok=True)
    for sent in announce_deaths(folder):
        print(f"playbook: a killed run of this incident: {notify.summary(sent)}",
              file=sys.stderr)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    mode = str(merged.get("mode") or "review")
    number, record_path = _claim_number(folder, path.stem, {
        "incident_id": incident_id, "notebook": path.stem, "operator": operator,
        "started_at": started_at, "target": target, "mode": mode,
        "pid": os.getpid(), "host": socket.gethostname()})
    base = record_path.with_suffix("")
    record = Record(
        incident_id=incident_id, number=number, notebook=path.stem, operator=operator,
        started_at=started_at, parameters=merged, target=target, mode=mode,
        files={"notebook": str(base) + ".ipynb", "html": str(base) + ".html",
               "record": str(record_path), "journal": str(journal.path_for(record_path))},
    )
    journal_file = Path(record.files["journal"])
    reserve = _reserve_room(record_path, journal_file)
    # Held until the record is written: a reader that can take this lock knows the run
    # is no longer running (killed), whatever became of its process id.
    alive = open(journal_file, "ab")  # noqa: SIM115 - closed in the finally below
    fcntl.flock(alive, fcntl.LOCK_EX)
    memory_path = f"{MEMORY.scheme}{uuid.uuid4().hex}.ipynb"
    cells = CellJournal(journal_file)
    MEMORY.watchers[memory_path] = cells
    crash, interrupted = "", False
    try:
        try:
            papermill.execute_notebook(
                str(path), memory_path, parameters=merged, kernel_name="python3",
                progress_bar=False, log_output=False, cwd=str(cwd or Path.cwd()),
                kernel_manager_class=_kernel_manager_with_journal(journal_file),
            )
        except papermill.PapermillExecutionError:
            pass  # read from the executed notebook below, cell by cell
        except KeyboardInterrupt:
            interrupted = True
            crash = "interrupted (Ctrl-C)"
        except Exception as exc:  # the kernel died, timed out, or could not start
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            crash = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        text = MEMORY.pop(memory_path)
        executed = (nbformat.reads(text, as_version=4) if text
                    else nbformat.read(path, as_version=4))
        record.ended_at = datetime.now(UTC).isoformat(timespec="seconds")
        record.moments = journal.merged(
            [e for e in journal.read(journal_file) if e.get("event") != journal.CELL],
            journal.moments_in(executed))

        where, ename, evalue = where_it_stopped(executed)
        if ename == "KeyboardInterrupt" and not crash:  # Ctrl-C reached the kernel first
            interrupted, crash = True, "interrupted (Ctrl-C)"
        if crash:
            record.outcome = DIED
            record.where = where or _where_from(cells.running)
            step = (f" while cell {record.where['cell']} ({record.where['step']}) was running"
                    if record.where else "")
            died_how = ("the run was interrupted (Ctrl-C)" if interrupted
                        else f"the kernel died ({crash})")
            record.why = f"{died_how}{step}"
            record.moments.append({"id": uuid.uuid4().hex, "at": record.ended_at,
                                   "event": journal.DIED, "text": record.why})
        elif where is None:
            record.outcome = SUCCEEDED
        else:
            record.outcome = STOPPED if ename in GATE_EXCEPTIONS else FAILED
            record.where = where
            record.why = f"{ename}: {evalue}" if ename else "the notebook did not finish"
        if ename == "VerificationFailed":
            record.moments.append({"id": uuid.uuid4().hex, "at": record.ended_at,
                                   "event": journal.VERIFICATION, "passed": False,
                                   "text": evalue})
        record.notifications = [m for m in record.moments
                                if m.get("event") == journal.NOTIFICATION]
        _write_record(record, executed, secrets, reserve)
    finally:
        MEMORY.pop(memory_path)
        with contextlib.suppress(OSError):
            reserve.unlink()
        alive.close()
    if interrupted:
        raise KeyboardInterrupt
    return record


def _where_from(cell: dict | None) -> dict | None:
    if not cell:
        return None
    return {"cell": cell["cell"], "execution_count": None, "step": cell.get("step", ""),
            "source": cell.get("source", ""), "started_at": cell.get("at")}


def _kernel_manager_with_journal(path: Path) -> type[LocalSocketKernelManager]:
    """The playbook's kernel manager, telling the kernel where this run's journal is."""

    class JournalledKernelManager(LocalSocketKernelManager):
        async def start_kernel(self, **kw: object) -> None:
            env = dict(kw.pop("env", None) or os.environ)  # type: ignore[arg-type]
            env[journal.JOURNAL_ENV] = str(path)
            return await super().start_kernel(env=env, **kw)

    return JournalledKernelManager


def _reserve_room(record_path: Path, journal_file: Path) -> Path:
    """Set aside :data:`RESERVE_BYTES` beside the record (freed to write its outcome);
    refuse to run, changing nothing, when even that does not fit."""
    reserve = record_path.with_name(f".{record_path.stem}.reserve")
    try:
        fd = os.open(reserve, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    raise
                os.write(fd, b"\0" * RESERVE_BYTES)  # a filesystem without fallocate
        finally:
            os.close(fd)
        journal_file.touch()
    except OSError as exc:
        for leftover in (reserve, journal_file, record_path):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise PreconditionFailed(
            f"There is no room to record this run in {record_path.parent} ({exc.strerror}). "
            "Nothing was run or changed.",
            next_step="free some space there, or point PLAYBOOK_INCIDENTS at a folder on "
            "another disk, then run again.") from None
    return reserve


def _write_record(record: Record, executed: nbformat.NotebookNode,
                  secrets: list[str], reserve: Path | None = None) -> None:
    """The outcome first (the JSON, into the room reserved for it), then the executed
    notebook and its HTML copy as far as the disk allows; then the team is told; then
    the JSON again with what could not be written and the notification."""
    from nbconvert import HTMLExporter

    executed.metadata.setdefault("papermill", {})["output_path"] = record.files["notebook"]
    executed.metadata[RECORD_METADATA_KEY] = record.as_dict()
    clean = nbformat.from_dict(scrub(executed, secrets))
    summary = scrub(record.as_dict(), secrets)
    # The record's own fields are scrubbed too (a password in an error message).
    record.why, record.where = summary["why"], summary["where"]
    if reserve is not None:
        with contextlib.suppress(OSError):
            reserve.unlink()  # its room is now the outcome's
    _attempt(record, "record", lambda: write_scrubbed(
        Path(record.files["record"]), json.dumps(summary, indent=2) + "\n", secrets))
    _attempt(record, "notebook", lambda: write_scrubbed(
        Path(record.files["notebook"]), nbformat.writes(clean), secrets))

    def html() -> None:
        page, _ = HTMLExporter().from_notebook_node(clean)
        write_scrubbed(Path(record.files["html"]), str(scrub(page, secrets)), secrets)

    _attempt(record, "html", html)
    if record.mode == "execute":
        event = notify.DIED if record.outcome == DIED else notify.ENDED
        outcome = record.summary() + (f". {record.record_problem()}" if record.unwritten else "")
        sent = notify.send(notify.Notice(event, record.incident_id, record.notebook,
                                         record.target, record.operator, outcome,
                                         record.files["notebook"]), secrets)
        if sent is not None:
            print(f"playbook: {notify.summary(sent)}", file=sys.stderr)
            entry = {"id": uuid.uuid4().hex, "at": journal.now(),
                     "event": journal.NOTIFICATION, "text": notify.summary(sent), **sent}
            record.moments.append(entry)
            record.notifications.append(entry)
    if "record" in record.unwritten:
        record.fallback = _write_elsewhere(record, secrets)
    text = json.dumps(scrub(record.as_dict(), secrets), indent=2) + "\n"
    if record.unwritten or record.notifications:
        target = Path(record.fallback) if record.fallback else Path(record.files["record"])
        with contextlib.suppress(OSError):
            write_scrubbed(target, text, secrets)


def _attempt(record: Record, name: str, write) -> bool:
    """Write one file of the record; a full disk (or any OS error) is noted, not raised:
    the rest of the record is still tried."""
    try:
        write()
        return True
    except OSError as exc:
        record.unwritten[name] = f"{Path(record.files[name]).name}: {exc.strerror or exc}"
        return False


def fallback_folders() -> list[Path]:
    """Where an outcome goes when the incident folder cannot take it."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return [Path(state) / "playbook" / "records",
            Path(tempfile.gettempdir()) / f"playbook-records-{os.getuid()}"]


def _fallback_name(record_path: Path) -> str:
    return f"{record_path.parent.name}-{record_path.name}"


def _write_elsewhere(record: Record, secrets: list[str]) -> str:
    """The outcome on stderr, and in the first fallback folder that takes it."""
    record_path = Path(record.files["record"])
    for folder in fallback_folders():
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            target = folder / _fallback_name(record_path)
            record.fallback = str(target)
            write_scrubbed(target, json.dumps(scrub(record.as_dict(), secrets), indent=2),
                           secrets)
            break
        except OSError:
            record.fallback = ""
    print("playbook: the record could not be written; its outcome follows.\n"
          + json.dumps(scrub(record.as_dict(), secrets), indent=2), file=sys.stderr)
    return record.fallback


# --- reading records back -----------------------------------------------------------------



def read_records(folder: Path) -> list[Record]:
    """The finished runs of an incident folder, in order, and the runs that died: a run
    whose record still says "running" while nothing holds its journal any more was
    killed; it is read back from its journal (the last cell started, and when)."""
    records = []
    for path in sorted(folder.glob("*.json"), key=lambda p: p.name):
        if not re.match(r"\d+-", path.name):
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue  # never written whole (only a playbook older than journals did that)
        if data.get("status") == "running":
            elsewhere = _written_elsewhere(path)
            record = _record_of(elsewhere) if elsewhere else _died(path, data)
            if record is not None:
                records.append(record)
            continue
        records.append(_record_of(data))
    return records


ANNOUNCED = "death announced"


def announce_deaths(folder: Path) -> list[dict]:
    """Tell the team about runs of ``folder`` found dead (killed with their process, so
    nobody could say so when it happened), once each; returns what was sent. Called when
    the next run of the incident starts and by `playbook incidents` / `timeline`."""
    sent = []
    for record in read_records(folder):
        journal_file = Path(record.files.get("journal", ""))
        if record.outcome != DIED or record.mode != "execute" or not journal_file.is_file() \
                or Path(record.files["notebook"]).exists():
            continue  # a death `playbook run` saw itself was announced then
        if any(e.get("event") == ANNOUNCED for e in journal.read(journal_file)):
            continue
        result = notify.send(notify.Notice(
            notify.DIED, record.incident_id, record.notebook, record.target,
            record.operator, record.summary(), record.files["record"]),
            live_secrets([str(record.parameters.get("database_url_env") or
                              connecting.DEFAULT_URL_ENV)] if record.parameters else []))
        if result is None:
            continue
        entry = {"id": uuid.uuid4().hex, "at": journal.now(), "event": ANNOUNCED,
                 "notification": result}
        if journal.append(journal_file, entry):
            sent.append(result)
    return sent


def _record_of(data: Mapping) -> Record:
    fields = {k: data.get(k) for k in Record.__dataclass_fields__ if k in data}
    return Record(**fields)


def _written_elsewhere(path: Path) -> dict | None:
    """The outcome a full disk sent to a fallback folder, if there is one."""
    for folder in fallback_folders():
        candidate = folder / _fallback_name(path)
        try:
            return json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
    return None


def still_running(journal_file: Path) -> bool:
    """Whether the `playbook run` that writes ``journal_file`` still holds it."""
    try:
        with open(journal_file, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def _died(path: Path, stub: Mapping) -> Record | None:
    """A run whose process ended before its record was written, from its journal; None
    while it still runs (or for a record without a journal)."""
    journal_file = journal.path_for(path)
    if not journal_file.is_file() or still_running(journal_file):
        return None
    entries = journal.read(journal_file)
    cells = [e for e in entries if e.get("event") == journal.CELL]
    last = cells[-1] if cells else None
    ended = entries[-1].get("at") if entries else stub.get("started_at", "")
    where = _where_from(last)
    why = ("the playbook run process ended without writing the record (killed?)"
           + (f" while cell {last['cell']} ({last.get('step', '')}) was running, started "
              f"{last.get('at')}" if last else " before the first cell started"))
    base = path.with_suffix("")
    moments = [e for e in entries if e.get("event") not in (journal.CELL, ANNOUNCED)]
    moments.append({"id": f"died-{path.name}", "at": ended, "event": journal.DIED, "text": why})
    told = [{"event": journal.NOTIFICATION, "at": e.get("at"), "text": notify.summary(
        e["notification"]), **e["notification"]} for e in entries
        if e.get("event") == ANNOUNCED and isinstance(e.get("notification"), dict)]
    return Record(
        incident_id=str(stub.get("incident_id", "")), number=int(stub.get("number") or
                                                                 path.name.split("-")[0]),
        notebook=str(stub.get("notebook") or path.stem.split("-", 1)[-1]),
        operator=str(stub.get("operator", "")), started_at=str(stub.get("started_at", "")),
        ended_at=str(ended or ""), outcome=DIED, where=where, why=why,
        target=str(stub.get("target", "")), mode=str(stub.get("mode", "")), moments=moments,
        notifications=[m for m in moments if m.get("event") == journal.NOTIFICATION] + told,
        files={"notebook": str(base) + ".ipynb", "html": str(base) + ".html",
               "record": str(path), "journal": str(journal_file)})


def list_incidents(root: Path | None = None) -> pd.DataFrame:
    """Every incident under the root: its date, runs, and how the last run ended."""
    root = root or incidents_root()
    rows = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        match = _FOLDER.fullmatch(folder.name)
        if not folder.is_dir() or not match:
            continue
        records = read_records(folder)
        last = records[-1] if records else None
        rows.append({
            "incident": match.group(2),
            "date": match.group(1),
            "runs": len(records),
            "notebooks": ", ".join(dict.fromkeys(r.notebook for r in records)),
            "last outcome": last.summary() if last else "(no finished run)",
            "folder": str(folder),
        })
    return pd.DataFrame(rows, columns=["incident", "date", "runs", "notebooks",
                                       "last outcome", "folder"])
