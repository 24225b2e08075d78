"""Running the notebooks headlessly in tests, exactly as automation does (papermill).

The kernel inherits this process's environment, so ``DATABASE_URL`` set by the
``demo_db`` fixture reaches it; the connection string is never a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nbformat
import papermill
import yaml

from playbook.kernels import LocalSocketKernelManager

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PARAMETERS = ROOT / "parameters"


def shipped_parameters(stem: str) -> dict:
    """The parameters file shipped beside the notebook (every gate answered "no")."""
    return yaml.safe_load((PARAMETERS / f"{stem}.yaml").read_text()) or {}


@dataclass
class NotebookRun:
    path: Path
    notebook: nbformat.NotebookNode
    error: papermill.PapermillExecutionError | None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def outputs_text(self) -> str:
        """Every text output of the executed notebook, for assertions on what was shown."""
        parts = []
        for cell in self.notebook.cells:
            for output in cell.get("outputs", []):
                if "text" in output:
                    parts.append(output["text"])
                for key in ("text/plain", "text/html", "text/markdown"):
                    if key in output.get("data", {}):
                        parts.append(output["data"][key])
                if output.get("output_type") == "error":
                    parts.append(output.get("ename", "") + ": " + output.get("evalue", ""))
        return "\n".join(parts)


def run_notebook(stem: str, output_dir: Path, parameters: dict | None = None,
                 *, name: str | None = None) -> NotebookRun:
    """Execute notebooks/<stem>.ipynb with papermill into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / f"{name or stem}.ipynb"
    error = None
    try:
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{stem}.ipynb"), str(out), parameters=parameters or {},
            kernel_name="python3", progress_bar=False, cwd=str(ROOT),
            kernel_manager_class=LocalSocketKernelManager,
        )
    except papermill.PapermillExecutionError as exc:
        error = exc
    return NotebookRun(out, nbformat.read(out, as_version=4), error)


def write_notebook(path: Path, cells: list) -> Path:
    """A notebook of ``cells`` for the python3 kernel, written at ``path`` (its folder made)."""
    from nbformat.v4 import new_notebook

    path.parent.mkdir(parents=True, exist_ok=True)
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)
    return path
