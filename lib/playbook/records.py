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

Where the incident folders are (and their exports) is :mod:`playbook.incidents`.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import nbformat
import pandas as pd
import papermill
import yaml
from papermill.iorw import papermill_io

from . import connecting
from .errors import ConfigurationError, ObjectNotFound, RecordRefused
from .incidents import FOLDER_NAME as _FOLDER
from .incidents import incident_folder, incidents_root, require_incident_id
from .kernels import LocalSocketKernelManager

SUCCEEDED, STOPPED, FAILED = "succeeded", "stopped at a gate", "failed"
GATE_EXCEPTIONS = {"GateClosed"}
PROJECT_ROOT = Path(__file__).resolve().parents[2]
RECORD_METADATA_KEY = "playbook_record"
# A connection string with an inline password, in either libpq form.
_URL_WITH_PASSWORD = re.compile(r"postgres(?:ql)?://[^:/@\s]*:[^@\s]+@|password\s*=", re.I)


# --- which notebook, which parameters ---------------------------------------------------


def notebooks_folder() -> Path:
    """``./notebooks`` when run from a project folder, else the project's own."""
    here = Path.cwd() / "notebooks"
    return here if here.is_dir() else PROJECT_ROOT / "notebooks"


def resolve_notebook(notebook: str, notebooks_dir: Path | None = None) -> Path:
    """A notebook given by stem (``10_rollback_sequence``) or by path."""
    as_path = Path(notebook)
    if as_path.suffix == ".ipynb" and as_path.is_file():
        return as_path.resolve()
    folder = Path(notebooks_dir) if notebooks_dir else notebooks_folder()
    path = folder / f"{as_path.stem if as_path.suffix == '.ipynb' else notebook}.ipynb"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", path.stem) or not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.ipynb")) if folder.is_dir() else []
        raise ObjectNotFound(
            f"There is no notebook {notebook!r} in {folder}. Nothing was run.",
            next_step=f"use one of: {', '.join(known) or '(none found)'}.",
        )
    return path.resolve()


def declared_parameters(path: Path) -> dict[str, dict]:
    """The notebook's parameters (papermill's view of its ``parameters`` cell)."""
    return dict(papermill.inspect_notebook(str(path)))


def load_parameter_file(path: Path | str | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ObjectNotFound(f"The parameters file {path} does not exist. Nothing was run.",
                             next_step="pass the path of a YAML file, e.g. parameters/<stem>.yaml.")
    try:
        given = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"The parameters file {path} is not valid YAML ({exc}). "
                                 "Nothing was run.", next_step="fix the file.") from None
    if not isinstance(given, dict):
        raise ConfigurationError(f"The parameters file {path} must hold a mapping of "
                                 "parameter names to values. Nothing was run.",
                                 next_step="write it as `name: value` lines.")
    return given


def shipped_parameter_file(stem: str) -> Path | None:
    """``parameters/<stem>.yaml`` beside the notebooks, when there is one."""
    for folder in (Path.cwd() / "parameters", PROJECT_ROOT / "parameters"):
        if (folder / f"{stem}.yaml").is_file():
            return folder / f"{stem}.yaml"
    return None


def check_parameters(parameters: Mapping[str, object], declared: Mapping[str, dict],
                     notebook: str, secrets: Iterable[str] = ()) -> None:
    """Refuse, before anything runs, a parameter the notebook does not declare and any
    value that is (or holds) a connection string with a password."""
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ConfigurationError(
            f"{notebook} has no parameter {', '.join(unknown)}. Nothing was run.",
            next_step=f"its parameters are {', '.join(declared)}.",
        )
    if "lock_timeout" in parameters:  # 0 (wait forever) or too long: refused before the run
        connecting.lock_timeout_setting(parameters["lock_timeout"])
    secrets = [s for s in secrets if s]
    for name, value in parameters.items():
        text = json.dumps(value, default=str)
        if _URL_WITH_PASSWORD.search(text) or any(s in text for s in secrets):
            raise ConfigurationError(
                f"The parameter {name} holds a connection string or password; it would be "
                "written into the record. Nothing was run.",
                next_step="put the connection string in an environment variable and pass its "
                "name as database_url_env.",
            )


# --- papermill into memory -------------------------------------------------------------


class _MemoryHandler:
    """papermill I/O for ``playbook-memory://`` paths: the executed notebook stays in this
    process until it has been scrubbed, so an unscrubbed output never touches the disk."""

    scheme = "playbook-memory://"

    def __init__(self) -> None:
        self.buffers: dict[str, str] = {}
        self.lock = threading.Lock()

    def read(self, path: str) -> str:
        return self.buffers[path]

    def write(self, buf: str, path: str) -> None:
        with self.lock:
            self.buffers[path] = buf

    def listdir(self, path: str) -> list[str]:
        return []

    def pretty_path(self, path: str) -> str:
        return path

    def pop(self, path: str) -> str | None:
        with self.lock:
            return self.buffers.pop(path, None)


_MEMORY = _MemoryHandler()
papermill_io.register(_MEMORY.scheme, _MEMORY)


# --- secrets ----------------------------------------------------------------------------


def live_secrets(env_names: Iterable[str]) -> list[str]:
    """Passwords the run could leak: those of the named variables' connection strings and
    PGPASSWORD, raw and URL-encoded."""
    found: set[str] = set()
    for name in {*env_names, connecting.DEFAULT_URL_ENV}:
        url = os.environ.get(name, "") if isinstance(name, str) else ""
        for secret in connecting.secrets_of(url):
            found.update({secret, quote(secret, safe="")})
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def scrub(value: object, secrets: Iterable[str]) -> object:
    """``value`` (a notebook's JSON tree) with every secret and URL password replaced."""
    secrets = list(secrets)
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return connecting.redact(value)
    if isinstance(value, Mapping):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secrets) for v in value]
    return value


def write_scrubbed(path: Path, text: str, secrets: Iterable[str]) -> None:
    """Write ``text`` unless it still holds a secret (then refuse, writing nothing)."""
    leaked = [s for s in secrets if s and s in text]
    if leaked:
        raise RecordRefused(
            f"The record {path.name} would contain the live database password, so it was not "
            "written.",
            next_step="the run itself happened; read its outcome in the other files of the "
            "incident, and report this as a bug in the playbook.",
        )
    path.write_text(text)


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

    @property
    def exit_code(self) -> int:
        return 0 if self.outcome == SUCCEEDED else 1

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
        return text


def _claim_number(folder: Path, stem: str) -> tuple[int, Path]:
    """The next NN in ``folder``, claimed by creating its JSON exclusively (two runs
    started at once get different numbers)."""
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
            json.dump({"status": "running"}, handle)
        return number, path


def _step_of(cells: list, index: int) -> str:
    """The heading of the markdown cell that introduces code cell ``index``."""
    for cell in reversed(cells[:index]):
        if cell.get("cell_type") == "markdown":
            for line in cell.get("source", "").splitlines():
                if line.strip():
                    return line.strip().lstrip("#").strip()[:120]
    return ""


def where_it_stopped(nb: nbformat.NotebookNode) -> tuple[dict | None, str, str]:
    """(where, exception name, message) of the first cell that raised, or (None, "", "")."""
    cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    for index, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                source = cell.get("source", "").strip().splitlines()
                return (
                    {"cell": index, "execution_count": cell.get("execution_count"),
                     "step": _step_of(cells, index), "source": source[0] if source else ""},
                    output.get("ename", ""),
                    output.get("evalue", ""),
                )
    return None, "", ""


def _coerce(value: object, declared: dict | None) -> object:
    """A ``-p`` value typed as the notebook declares it (YAML otherwise)."""
    if not isinstance(value, str):
        return value
    type_name = (declared or {}).get("inferred_type_name", "")
    if type_name == "str":
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


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
    merged.update({k: _coerce(v, declared.get(k)) for k, v in (parameters or {}).items()})
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
    number, record_path = _claim_number(folder, path.stem)
    base = record_path.with_suffix("")
    record = Record(
        incident_id=incident_id, number=number, notebook=path.stem, operator=operator,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"), parameters=merged,
        target=target,
        files={"notebook": str(base) + ".ipynb", "html": str(base) + ".html",
               "record": str(record_path)},
    )
    memory_path = f"{_MEMORY.scheme}{uuid.uuid4().hex}.ipynb"
    crash = ""
    try:
        papermill.execute_notebook(
            str(path), memory_path, parameters=merged, kernel_name="python3",
            progress_bar=False, log_output=False, cwd=str(cwd or Path.cwd()),
            kernel_manager_class=LocalSocketKernelManager,
        )
    except papermill.PapermillExecutionError:
        pass  # read from the executed notebook below, cell by cell
    except Exception as exc:  # the kernel died, timed out, or could not start
        crash = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    text = _MEMORY.pop(memory_path)
    executed = nbformat.reads(text, as_version=4) if text else nbformat.read(path, as_version=4)
    record.ended_at = datetime.now(UTC).isoformat(timespec="seconds")

    where, ename, evalue = where_it_stopped(executed)
    if where is None and not crash:
        record.outcome = SUCCEEDED
    else:
        record.outcome = STOPPED if ename in GATE_EXCEPTIONS else FAILED
        record.where = where
        record.why = f"{ename}: {evalue}" if ename else crash or "the notebook did not finish"
    _write_record(record, executed, secrets)
    return record


def _write_record(record: Record, executed: nbformat.NotebookNode,
                  secrets: list[str]) -> None:
    from nbconvert import HTMLExporter

    executed.metadata.setdefault("papermill", {})["output_path"] = record.files["notebook"]
    executed.metadata[RECORD_METADATA_KEY] = record.as_dict()
    clean = nbformat.from_dict(scrub(executed, secrets))
    summary = scrub(record.as_dict(), secrets)
    # The record's own fields are scrubbed too (a password in an error message).
    record.why, record.where = summary["why"], summary["where"]
    write_scrubbed(Path(record.files["notebook"]), nbformat.writes(clean), secrets)
    html, _ = HTMLExporter().from_notebook_node(clean)
    write_scrubbed(Path(record.files["html"]), str(scrub(html, secrets)), secrets)
    write_scrubbed(Path(record.files["record"]), json.dumps(summary, indent=2) + "\n", secrets)


# --- reading records back -----------------------------------------------------------------


def read_records(folder: Path) -> list[Record]:
    """The finished runs of an incident folder, in order."""
    records = []
    for path in sorted(folder.glob("*.json"), key=lambda p: p.name):
        if not re.match(r"\d+-", path.name):
            continue
        data = json.loads(path.read_text())
        if data.get("status") == "running":
            continue
        records.append(Record(**{k: data.get(k) for k in Record.__dataclass_fields__}))
    return records


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
