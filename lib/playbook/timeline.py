"""The post-mortem timeline of an incident, from its records' own execution metadata.

papermill stamps every executed cell with ``start_time``, ``end_time`` and ``status``;
the timeline reads those back from each record of the incident (nothing is re-run or
remembered separately), writes ``timeline.md`` and ``timeline.png`` (the steps over time)
in the incident's folder, and lists every checklist item left open as a follow-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pandas as pd

from .checklists import checklists_in
from .incidents import require_incident
from .records import Record, read_records

STATUS_COLOURS = {"completed": "#2e7d32", "failed": "#c62828", "pending": "#9e9e9e"}


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _step_name(cells: list, index: int) -> str:
    """The heading of the markdown cell introducing code cell ``index``, else its code."""
    cell = cells[index]
    if "parameters" in cell.metadata.get("tags", []) or \
            "injected-parameters" in cell.metadata.get("tags", []):
        return "parameters"
    for previous in reversed(cells[:index]):
        if previous.cell_type == "markdown":
            for line in previous.source.splitlines():
                if line.strip():
                    return line.strip().lstrip("#").strip()[:80]
        if previous.cell_type == "code" and previous.metadata.get("papermill", {}):
            break
    lines = cell.source.strip().splitlines()
    return lines[0][:80] if lines else "(empty cell)"


def steps_of(record: Record) -> list[dict]:
    """Every executed code cell of one record: step, start, end, status."""
    path = Path(record.files["notebook"])
    notebook = nbformat.read(path, as_version=4)
    cells = [c for c in notebook.cells
             if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    steps = []
    for index, cell in enumerate(cells):
        stamp = cell.metadata.get("papermill", {})
        if cell.cell_type != "code" or not stamp:
            continue
        steps.append({
            "run": f"{record.number:02d}",
            "notebook": record.notebook,
            "cell": index,
            "step": _step_name(cells, index),
            "start": _time(stamp.get("start_time")),
            "end": _time(stamp.get("end_time")),
            "status": stamp.get("status", "pending"),
        })
    return steps


def follow_ups(records: list[Record]) -> list[dict]:
    """Checklist items still open in the last record of each checklist."""
    latest: dict[str, tuple[Record, dict]] = {}
    for record in records:
        notebook = nbformat.read(Path(record.files["notebook"]), as_version=4)
        for checklist in checklists_in(notebook):
            latest[checklist["name"]] = (record, checklist)
    return [
        {"checklist": checklist["title"], "item": item["item"], "text": item["text"],
         "recorded in": f"{record.number:02d}-{record.notebook}"}
        for record, checklist in latest.values()
        for item in checklist["items"] if not item["done"]
    ]


@dataclass
class Timeline:
    incident_id: str
    folder: Path
    records: list[Record]
    steps: pd.DataFrame
    follow_ups: list[dict]
    markdown_path: Path
    picture_path: Path


def build_timeline(incident_id: str, root: Path | None = None) -> Timeline:
    """Write ``timeline.md`` and ``timeline.png`` for the incident and return them."""
    folder = require_incident(incident_id, root)
    records = read_records(folder)
    steps = pd.DataFrame([s for r in records for s in steps_of(r)],
                         columns=["run", "notebook", "cell", "step", "start", "end", "status"])
    open_items = follow_ups(records)
    timeline = Timeline(incident_id, folder, records, steps, open_items,
                        folder / "timeline.md", folder / "timeline.png")
    timeline.markdown_path.write_text(_markdown(timeline))
    _plot(timeline)
    return timeline


def _known(moment: object) -> bool:
    return moment is not None and not pd.isna(moment)


def _fmt(moment: datetime | None) -> str:
    return moment.strftime("%H:%M:%S") if _known(moment) else ""


def _markdown(t: Timeline) -> str:
    lines = [f"# Incident {t.incident_id}: timeline", "",
             f"Built {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC from the executed notebooks' "
             "own execution metadata (papermill).", "", "## Runs", "",
             "| # | notebook | operator | started (UTC) | ended (UTC) | outcome |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in t.records:
        outcome = r.outcome
        if r.where:
            outcome += f" at cell {r.where.get('cell')} ({r.where.get('step')})"
        if r.why:
            outcome += f": {r.why}"
        lines.append(f"| {r.number:02d} | {r.notebook} | {r.operator} | {r.started_at} | "
                     f"{r.ended_at} | {outcome.replace('|', '/')} |")
    lines += ["", "## Steps", "", "| run | notebook | step | start | end | seconds | status |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in t.steps.itertuples():
        seconds = ((s.end - s.start).total_seconds()
                   if _known(s.start) and _known(s.end) else None)
        lines.append(f"| {s.run} | {s.notebook} | {s.step.replace('|', '/')} | "
                     f"{_fmt(s.start)} | {_fmt(s.end)} | "
                     f"{'' if seconds is None else f'{seconds:.1f}'} | {s.status} |")
    lines += ["", "## Follow-ups (checklist items left open)", ""]
    lines += [f"- [ ] {f['checklist']}: {f['text']} (`{f['item']}`, {f['recorded in']})"
              for f in t.follow_ups] or ["None: every recorded checklist item is done."]
    lines += ["", f"![steps over time]({t.picture_path.name})", ""]
    return "\n".join(lines)


def _plot(t: Timeline) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    steps = t.steps.dropna(subset=["start"])
    fig, ax = plt.subplots(figsize=(11, max(2.5, 0.32 * len(steps) + 1.5)))
    for y, s in enumerate(steps.itertuples()):
        end = s.end if _known(s.end) else s.start
        width = max((end - s.start).total_seconds(), 0.05) / 86400  # days, matplotlib's unit
        ax.barh(y, width, left=mdates.date2num(s.start),
                color=STATUS_COLOURS.get(s.status, "#9e9e9e"))
    ax.set_yticks(range(len(steps)))
    ax.set_yticklabels([f"{s.run} {s.notebook[:18]}: {s.step[:40]}" for s in steps.itertuples()],
                       fontsize=7)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.set_xlabel("time (UTC)")
    ax.set_title(f"Incident {t.incident_id}: steps over time "
                 "(green completed, red failed, grey not run)")
    fig.tight_layout()
    fig.savefig(t.picture_path, dpi=100)
    plt.close(fig)
