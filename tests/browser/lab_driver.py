"""What an operator does in JupyterLab, as Playwright steps: open a notebook, use the
menus, click a gate's YES/NO buttons, read what the cells showed, save.

Every wait is bounded; "the run is done" means an execution count rose, no cell shows
``[*]`` and the notebook's execution indicator says idle.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import nbformat
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from playwright.sync_api import Locator, Page

from playbook.cli.lab import LabServer

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
STDERR = '[data-mime-type="application/vnd.jupyter.stderr"]'
KERNEL_START_TIMEOUT_MS = 90_000
RUN_TIMEOUT_MS = 120_000
# The highest execution count any cell shows ("[12]:"), 0 when none ran.
_LAST_EXECUTION_COUNT = """() => Math.max(0, ...[
    ...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')
].map(p => parseInt((p.textContent.match(/\\d+/) || ['0'])[0])))"""


class LabPage:
    def __init__(self, page: Page, server: LabServer, folder: Path, screenshots: Path) -> None:
        self.page = page
        self.server = server
        self.folder = folder
        self.screenshots = screenshots
        self.notebook_path: Path | None = None
        self._shots = 0

    # -- files ------------------------------------------------------------------------

    def add_prepared_notebook(self, stem: str, **parameters: object) -> Path:
        """notebooks/<stem>.ipynb with ``parameters`` injected as papermill's
        ``--prepare-only`` does, written into this test's folder; the widgets then start
        from the injected ``answers``."""
        nb = load_notebook_node(str(NOTEBOOKS / f"{stem}.ipynb"))
        path = self.folder / f"{stem}.ipynb"
        nbformat.write(parameterize_notebook(nb, parameters), path)
        return path

    def saved_notebook(self) -> nbformat.NotebookNode:
        assert self.notebook_path is not None
        return nbformat.read(self.notebook_path, as_version=4)

    # -- opening and running ----------------------------------------------------------

    def open(self, notebook: Path) -> None:
        """Open ``notebook`` (inside the lab's root) and wait for its kernel to be idle."""
        self.notebook_path = notebook
        relative = notebook.relative_to(self.server.root_dir).as_posix()
        # A workspace of its own: JupyterLab would otherwise reopen other tests' tabs.
        self.page.goto(self.server.url(f"lab/workspaces/{self.folder.name}/tree/{relative}"))
        self.page.locator(".jp-Notebook .jp-Cell").first.wait_for(
            timeout=KERNEL_START_TIMEOUT_MS)
        # autoStartDefaultKernel should spare the operator the "Select Kernel" dialog; if
        # it shows anyway, accept the preselected (project) kernel as a person would.
        self.page.wait_for_function(
            """() => document.querySelector('.jp-Dialog') ||
                [...document.querySelectorAll('.jp-StatusBar-TextItem')]
                    .some(e => e.textContent.includes('| Idle'))""",
            timeout=KERNEL_START_TIMEOUT_MS)
        select = self.page.locator(".jp-Dialog").get_by_role("button", name="Select")
        if select.count():
            select.click()
        self.page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first.wait_for(
            timeout=KERNEL_START_TIMEOUT_MS)
        self.page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for(
            timeout=KERNEL_START_TIMEOUT_MS)

    def menu(self, *labels: str) -> None:
        """Click through the menu bar, e.g. ``menu("Run", "Run All Cells")``."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=labels[0]).first.click()
        for label in labels[1:]:
            item = self.page.locator(".lm-Menu-item:visible").filter(
                has=self.page.locator(".lm-Menu-itemLabel", has_text=label)).first
            item.click()

    def run_all(self) -> None:
        before = self._last_execution_count()
        self.menu("Run", "Run All Cells")
        self.wait_until_idle(after=before)

    def run_from(self, cell: Locator) -> None:
        """Select ``cell`` and run it and every cell below (after answering a gate)."""
        self.select(cell)
        before = self._last_execution_count()
        self.menu("Run", "Run Selected Cell and All Below")
        self.wait_until_idle(after=before)

    def select(self, cell: Locator) -> None:
        cell.scroll_into_view_if_needed()
        cell.locator(".jp-InputPrompt").first.click()

    def _last_execution_count(self) -> int:
        return self.page.evaluate(_LAST_EXECUTION_COUNT)

    def wait_until_idle(self, after: int = -1, timeout_ms: int = RUN_TIMEOUT_MS) -> None:
        """Wait until the kernel ran something (an execution count above ``after``), no
        cell is queued or running, and the kernel is idle."""
        self.page.wait_for_function(
            f"""after => {{
                const prompts = [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')];
                const running = prompts.some(p => p.textContent.includes('*'));
                const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
                return !running && ({_LAST_EXECUTION_COUNT})() > after &&
                    indicator && indicator.dataset.status === 'idle';
            }}""",
            arg=after,
            timeout=timeout_ms,
        )

    def save(self) -> nbformat.NotebookNode:
        """File -> Save Notebook; wait until the tab is clean and the file was rewritten;
        return the notebook as saved on disk."""
        assert self.notebook_path is not None
        before = self.notebook_path.stat().st_mtime_ns
        self.menu("File", "Save Notebook")
        dirty = self.page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty")
        for _ in range(150):
            if self.notebook_path.stat().st_mtime_ns != before and dirty.count() == 0:
                return self.saved_notebook()
            self.page.wait_for_timeout(100)
        raise AssertionError(f"{self.notebook_path.name} was not saved within 15 s")

    # -- what the notebook shows ------------------------------------------------------

    def cells(self) -> Locator:
        return self.page.locator(".jp-Notebook .jp-Cell")

    def code_cell(self, source_contains: str, nth: int = 0) -> Locator:
        """The ``nth`` code cell whose source contains ``source_contains``."""
        return self.page.locator(".jp-Notebook .jp-CodeCell").filter(
            has=self.page.locator(".jp-InputArea-editor", has_text=source_contains)).nth(nth)

    def questions(self, prefix: str = "gate-") -> list[str]:
        """Question ids of every YES/NO widget rendered whose class starts with ``prefix``
        (gates use ``gate-<id>``, triage ``triage-<id>``), in page order: a question
        rendered twice appears twice."""
        toggles = self.page.locator(f".widget-toggle-buttons[class*='{prefix}']")
        toggles.first.wait_for()  # widget views render after the cell finished
        classes = toggles.evaluate_all(
            "(els, prefix) => els.map(e => [...e.classList].find(c => c.startsWith(prefix)))",
            prefix)
        return [name.removeprefix(prefix) for name in classes if name]

    def answer(self, question_id: str, choice: str, prefix: str = "gate-") -> None:
        """Click YES or NO for ``question_id``, as the operator would."""
        toggles = self.page.locator(f".widget-toggle-buttons.{prefix}{question_id}").first
        toggles.scroll_into_view_if_needed()
        button = toggles.locator("button", has_text=choice).first
        button.click()
        # The button shows as pressed once the widget model took the value.
        self.page.wait_for_function(
            "b => b.classList.contains('mod-active')", arg=button.element_handle())

    def tick(self, css_class: str) -> None:
        """Tick the checkbox widget carrying ``css_class``."""
        box = self.page.locator(f".{css_class} input[type=checkbox]").first
        box.scroll_into_view_if_needed()
        box.check()

    def errors(self) -> list[str]:
        """Text of every error output on the page."""
        return [text for text in self.page.locator(STDERR).all_inner_texts() if text.strip()]

    def tables(self) -> Locator:
        return self.page.locator(".jp-OutputArea-output table.dataframe")

    def executed(self, cell: Locator) -> bool:
        prompt = cell.locator(".jp-InputPrompt").first.inner_text()
        return any(ch.isdigit() for ch in prompt)

    def held_by_the_gate(self, cell: Locator) -> bool:
        """True when ``cell`` did not do its work: never run, or it refused itself with
        GateClosed. (With ipykernel 7, Run All can still start a cell queued behind a
        failed gate.check() when the kernel receives it late; the playbook's steps then
        stop themselves.)"""
        if not self.executed(cell):
            return True
        return "GateClosed" in cell.locator(".jp-OutputArea").inner_text()

    def screenshot(self, name: str, focus: Locator | None = None) -> Path:
        """Save a screenshot (``focus`` scrolled into view first) into the test's folder."""
        self._shots += 1
        if focus is not None:
            focus.scroll_into_view_if_needed()
        path = self.screenshots / f"{self._shots:02d}-{name}.png"
        self.page.screenshot(path=str(path))
        return path

    # -- clean-up ---------------------------------------------------------------------

    def shutdown_kernels(self) -> None:
        """Stop the kernels this test started, so the next test starts clean."""
        headers = {"Authorization": f"token {self.server.token}"}
        request = urllib.request.Request(f"{self.server.base_url}/api/sessions", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            sessions = json.load(response)
        for session in sessions:
            if not session.get("path", "").startswith(self.folder.name + "/"):
                continue
            delete = urllib.request.Request(
                f"{self.server.base_url}/api/sessions/{session['id']}",
                headers=headers, method="DELETE")
            urllib.request.urlopen(delete, timeout=30).close()


def saved_widget_answers(nb: nbformat.NotebookNode) -> dict[str, object]:
    """What the saved notebook shows each answer widget holding, keyed by its CSS class
    (``gate-<id>``, ``triage-<id>``, ``checklist-<id>``): a ToggleButtons' label ("YES",
    "NO", None when unanswered) or a Checkbox's value.

    Only widgets reachable from a cell's displayed output count: the saved state also
    keeps models of earlier runs of a cell, which no reader of the record sees."""
    state = nb.metadata.get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})
    found: dict[str, object] = {}

    def visit(model_id: str) -> None:
        model = state.get(model_id)
        if model is None:
            return
        attrs = model.get("state", {})
        for css_class in attrs.get("_dom_classes", []):
            if model.get("model_name") == "ToggleButtonsModel":
                index = attrs.get("index")
                found[css_class] = None if index is None else attrs["_options_labels"][index]
            elif model.get("model_name") == "CheckboxModel":
                found[css_class] = attrs.get("value")
        for child in attrs.get("children", []):
            visit(child.removeprefix("IPY_MODEL_"))

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if view:
                visit(view["model_id"])
    return found


def outputs_text(cell: nbformat.NotebookNode) -> str:
    """Everything a saved cell's outputs show, as text."""
    parts = []
    for output in cell.get("outputs", []):
        parts.extend(str(v) for v in output.get("data", {}).values())
        parts.append(output.get("text", ""))
        parts.append(output.get("evalue", ""))
    return "\n".join(parts)
