"""Where the project's folders are: the one place that finds them.

The project folder is found from the working directory (it, or the nearest folder above
it, holding ``pyproject.toml`` and ``notebooks/``), so that JupyterLab running inside
``notebooks/`` and papermill run from the root agree on ``incidents/``, ``notebooks/``
and ``parameters/``. :data:`PLAYBOOK_ROOT` is the checkout this package was installed
from, used when the working directory is in no project.
"""

from __future__ import annotations

from pathlib import Path

PLAYBOOK_ROOT = Path(__file__).resolve().parents[2]


def project_root(start: Path | None = None) -> Path | None:
    """The project folder holding ``start`` (default: the working directory), or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "notebooks").is_dir():
            return folder
    return None


def project_folder(name: str) -> Path:
    """``name`` (``notebooks``, ``parameters``) of the working directory's project: its own
    ``./name`` first, then the project's, then the playbook's."""
    here = Path.cwd() / name
    if here.is_dir():
        return here
    return (project_root() or PLAYBOOK_ROOT) / name
