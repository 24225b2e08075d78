"""Which notebook, which parameters: what `playbook run` checks before anything runs.

A notebook is named by stem or path; its parameters are what papermill reads from its
``parameters`` cell; a parameters file or ``-p`` value it does not declare, or one that
looks like a connection string, is refused (see :mod:`playbook.records`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import papermill
import yaml

from .db import connecting
from .errors import ConfigurationError, ObjectNotFound
from .project import PLAYBOOK_ROOT, project_folder

_URL_WITH_PASSWORD = re.compile(r"postgres(?:ql)?://[^:/@\s]*:[^@\s]+@|password\s*=", re.I)



def notebooks_folder() -> Path:
    """``./notebooks`` when run from a project folder, else the project's own."""
    return project_folder("notebooks")


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
    for folder in (Path.cwd() / "parameters", PLAYBOOK_ROOT / "parameters"):
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


def coerce(value: object, declared: dict | None) -> object:
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
