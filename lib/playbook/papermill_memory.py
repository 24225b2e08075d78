"""papermill into memory: an executed notebook is kept in this process, never written to
disk before it is scrubbed, and each cell is journaled as papermill starts it."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import nbformat
from papermill.iorw import papermill_io

from . import journal


class MemoryHandler:
    """papermill I/O for ``playbook-memory://`` paths: the executed notebook stays in this
    process until it has been scrubbed, so an unscrubbed output never touches the disk."""

    scheme = "playbook-memory://"

    def __init__(self) -> None:
        self.buffers: dict[str, str] = {}
        self.watchers: dict[str, object] = {}
        self.lock = threading.Lock()

    def read(self, path: str) -> str:
        return self.buffers[path]

    def write(self, buf: str, path: str) -> None:
        with self.lock:
            self.buffers[path] = buf
            watcher = self.watchers.get(path)
        if watcher is not None:
            watcher(buf)  # papermill saves at every cell start: the journal learns of it

    def listdir(self, path: str) -> list[str]:
        return []

    def pretty_path(self, path: str) -> str:
        return path

    def pop(self, path: str) -> str | None:
        with self.lock:
            self.watchers.pop(path, None)
            return self.buffers.pop(path, None)


class CellJournal:
    """Journals each cell as papermill starts it (from its in-memory saves), so a run
    killed mid-cell leaves the cell it was in and when it started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.running: dict | None = None

    def __call__(self, text: str) -> None:
        try:
            notebook = nbformat.reads(text, as_version=4)
        except Exception:  # a save we cannot read is not worth stopping the run for
            return
        cells = recorded_cells(notebook)
        for index, cell in enumerate(cells):
            stamp = cell.get("metadata", {}).get("papermill", {})
            if stamp.get("status") == "running":
                if self.running is None or self.running["cell"] != index:
                    source = cell.get("source", "").strip().splitlines()
                    self.running = {
                        "at": stamp.get("start_time") or journal.now(), "event": journal.CELL,
                        "cell": index, "step": step_of(cells, index),
                        "source": source[0][:200] if source else ""}
                    journal.append(self.path, self.running)
                return


def recorded_cells(notebook: Mapping) -> list:
    return [c for c in notebook.get("cells", [])
            if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]


def step_of(cells: list, index: int) -> str:
    """The heading of the markdown cell that introduces code cell ``index``."""
    for cell in reversed(cells[:index]):
        if cell.get("cell_type") == "markdown":
            for line in cell.get("source", "").splitlines():
                if line.strip():
                    return line.strip().lstrip("#").strip()[:120]
    return ""


MEMORY = MemoryHandler()
papermill_io.register(MEMORY.scheme, MEMORY)
