"""The post-mortem timeline of an incident, from what its runs recorded.

``timeline.md`` opens with the incident summary: what changed in the database and when
(each COMMIT with the objects and rows it affected, from the runs' journals), the exports
and backups with their SHA-256, and the follow-ups still open (checklist items left open,
runs that died or failed, notifications that did not go out). Then the runs, their
moments, and every executed cell (papermill stamps each with ``start_time``, ``end_time``
and ``status``; a run killed before its notebook was written is read from its journal).

``timeline.png`` draws one bar per run, from start to end, coloured by outcome, with the
moments that matter marked on it: a gate answered, an export verified, a COMMIT, a
verification passed or failed, a death. It stays readable on one screen up to ten runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pandas as pd

from . import journal
from .checklists import checklists_in
from .incidents import require_incident
from .records import DIED, FAILED, STOPPED, SUCCEEDED, Record, read_records

STATUS_COLOURS = {"completed": "#2e7d32", "failed": "#c62828", "pending": "#9e9e9e"}
OUTCOME_COLOURS = {SUCCEEDED: "#66bb6a", STOPPED: "#ffb74d", FAILED: "#e57373",
                   DIED: "#b0bec5"}
# The moments drawn on a run's bar: label, marker, colour, size, and a small vertical
# offset so that moments a second apart (gate, export, COMMIT, checks) stay apart.
MARKERS = {
    "gate answered": ("v", "#1565c0", 70, -0.17),
    "gate closed": ("v", "#c62828", 70, -0.17),
    "export verified": ("s", "#6a1b9a", 55, -0.06),
    "COMMIT": ("*", "#000000", 240, 0.04),
    "verification passed": ("o", "#1b5e20", 55, 0.16),
    "verification failed": ("X", "#c62828", 90, 0.16),
    "died": ("X", "#000000", 140, 0.0),
}
NOT_RUN = "not run"


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
    """Every executed code cell of one record: step, start, end, status. A run that died
    before its notebook was written is read from its journal (each cell as it started);
    in a run that died, the cell it died in is "died" and none after it "completed"."""
    path = Path(record.files["notebook"])
    if not path.is_file():
        return _steps_from_journal(record)
    notebook = nbformat.read(path, as_version=4)
    cells = [c for c in notebook.cells
             if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    died_at = (record.where or {}).get("cell") if record.outcome == DIED else None
    steps = []
    for index, cell in enumerate(cells):
        stamp = cell.metadata.get("papermill", {})
        if cell.cell_type != "code" or not stamp:
            continue
        status = stamp.get("status", "pending")
        if died_at is not None and index >= died_at:
            status = DIED if index == died_at else NOT_RUN
        steps.append({
            "run": f"{record.number:02d}",
            "notebook": record.notebook,
            "cell": index,
            "step": _step_name(cells, index),
            "start": _time(stamp.get("start_time")),
            "end": _time(stamp.get("end_time")) if status != NOT_RUN else None,
            "status": status,
        })
    return steps


def _steps_from_journal(record: Record) -> list[dict]:
    started = [e for e in journal.read(record.files.get("journal"))
               if e.get("event") == journal.CELL]
    steps = []
    for position, entry in enumerate(started):
        following = started[position + 1] if position + 1 < len(started) else None
        last = following is None
        steps.append({
            "run": f"{record.number:02d}", "notebook": record.notebook,
            "cell": entry.get("cell"), "step": entry.get("step") or entry.get("source", ""),
            "start": _time(entry.get("at")),
            "end": _time(following.get("at")) if following else None,
            "status": (DIED if record.outcome == DIED else "running") if last else "completed",
        })
    return steps


def follow_ups(records: list[Record]) -> list[dict]:
    """Checklist items still open in the last record of each checklist."""
    latest: dict[str, tuple[Record, dict]] = {}
    for record in records:
        path = Path(record.files["notebook"])
        if not path.is_file():
            continue  # a run killed before its notebook was written
        notebook = nbformat.read(path, as_version=4)
        for checklist in checklists_in(notebook):
            latest[checklist["name"]] = (record, checklist)
    return [
        {"checklist": checklist["title"], "item": item["item"], "text": item["text"],
         "recorded in": f"{record.number:02d}-{record.notebook}"}
        for record, checklist in latest.values()
        for item in checklist["items"] if not item["done"]
    ]


def run_follow_ups(records: list[Record]) -> list[str]:
    """What the runs themselves leave to do: a run that died or failed (and what it had
    COMMITted), a notification that did not go out, a record not written whole."""
    found = []
    for r in records:
        label = f"{r.number:02d}-{r.notebook}"
        where = (f" at cell {r.where.get('cell')} ({r.where.get('step')})" if r.where else "")
        what = journal.describe_commits(r.moments or [])
        committed = (f"; {what} had COMMITTED (see above)" if what
                     else "; nothing it ran had COMMITTED")
        if r.outcome == DIED:
            found.append(f"Run {label} DIED{where} ({r.ended_at}): {r.why}{committed}. Check "
                         "the database against this, then run the notebook again.")
        elif r.outcome == FAILED:
            found.append(f"Run {label} failed{where}: {r.why}{committed}.")
        for note in r.notifications or []:
            if note.get("delivered") is False:
                found.append(f"Run {label}: {note.get('text')} Tell the team yourself.")
        if r.unwritten:
            found.append(f"Run {label}: {r.record_problem()}")
    return found


@dataclass
class Timeline:
    incident_id: str
    folder: Path
    records: list[Record]
    steps: pd.DataFrame
    follow_ups: list[dict]
    markdown_path: Path
    picture_path: Path
    moments: pd.DataFrame = field(default_factory=pd.DataFrame)
    run_follow_ups: list[str] = field(default_factory=list)
    evidence: list[dict] = field(default_factory=list)
    # What the picture drew, read back from its axes: one entry per bar.
    bars: list[dict] = field(default_factory=list)


def build_timeline(incident_id: str, root: Path | None = None) -> Timeline:
    """Write ``timeline.md`` and ``timeline.png`` for the incident and return them."""
    folder = require_incident(incident_id, root)
    records = read_records(folder)
    steps = pd.DataFrame([s for r in records for s in steps_of(r)],
                         columns=["run", "notebook", "cell", "step", "start", "end", "status"])
    timeline = Timeline(incident_id, folder, records, steps, follow_ups(records),
                        folder / "timeline.md", folder / "timeline.png",
                        moments=moments_of(records), run_follow_ups=run_follow_ups(records),
                        evidence=exports_and_backups(folder, records))
    timeline.markdown_path.write_text(_markdown(timeline))
    timeline.bars = _plot(timeline)
    return timeline


def moment_label(entry: dict) -> str | None:
    """The timeline's name for a journalled moment (None: not drawn)."""
    kind = entry.get("event")
    if kind == journal.GATE:
        return "gate answered" if entry.get("open") else "gate closed"
    if kind == journal.EXPORT_VERIFIED:
        return "export verified"
    if kind == journal.COMMITTED:
        return "COMMIT"
    if kind == journal.VERIFICATION:
        return "verification passed" if entry.get("passed") else "verification failed"
    if kind == journal.DIED:
        return "died"
    return None


def moments_of(records: list[Record]) -> pd.DataFrame:
    rows = []
    for r in records:
        for entry in r.moments or []:
            label = moment_label(entry) or (
                "notification" if entry.get("event") == journal.NOTIFICATION else None)
            if label and _time(entry.get("at")) is not None:
                rows.append({"run": f"{r.number:02d}", "notebook": r.notebook,
                             "at": _time(entry.get("at")), "moment": label,
                             "text": str(entry.get("text", ""))})
    return pd.DataFrame(rows, columns=["run", "notebook", "at", "moment", "text"])


# --- exports and backups ---------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def exports_and_backups(folder: Path, records: list[Record]) -> list[dict]:
    """Every export file (with the SHA-256 its manifest states, checked against the file)
    and every backup archive of the incident (with the SHA-256 computed here)."""
    found: list[dict] = []
    seen: set[Path] = set()
    for manifest_path in sorted(folder.rglob("manifest.json")):
        export = manifest_path.parent
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            found.append({"kind": "export", "file": str(export.relative_to(folder)),
                          "rows": "", "sha256": "", "check": "manifest unreadable"})
            continue
        found.append({"kind": "export manifest", "file": str(manifest_path.relative_to(folder)),
                      "rows": sum(int(e.get("rows") or 0) for e in manifest.get("files", [])),
                      "sha256": _sha256(manifest_path),
                      "check": f"{len(manifest.get('files', []))} files"})
        for entry in manifest.get("files", []):
            path = export / entry.get("file", "")
            seen.add(path.resolve())
            actual = _sha256(path) if path.is_file() else ""
            found.append({"kind": "export", "file": str(path.relative_to(folder)),
                          "rows": entry.get("rows", ""), "sha256": entry.get("sha256", ""),
                          "check": ("matches its manifest" if actual == entry.get("sha256")
                                    else "MISSING" if not actual else "DIFFERS from manifest")})
        for archive in sorted(export.glob("*.dump")):
            seen.add(archive.resolve())
            found.append({"kind": "export archive", "file": str(archive.relative_to(folder)),
                          "rows": "", "sha256": _sha256(archive), "check": "computed"})
    named = {Path(str(r.parameters.get(k))) for r in records
             for k in ("backup_file",) if (r.parameters or {}).get(k)}
    candidates = sorted((folder / "backups").glob("*")) if (folder / "backups").is_dir() else []
    for path in [*candidates, *sorted(named)]:
        if not path.is_file() or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        shown = str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)
        found.append({"kind": "backup", "file": shown, "rows": "", "sha256": _sha256(path),
                      "check": "computed"})
    return found


# --- timeline.md ----------------------------------------------------------------------


def _known(moment: object) -> bool:
    return moment is not None and not pd.isna(moment)


def _when(text: object) -> str:
    moment = _time(str(text)) if text else None
    return f"{moment:%Y-%m-%d %H:%M:%S}" if moment else ""


def _fmt(moment: datetime | None) -> str:
    return moment.strftime("%H:%M:%S") if _known(moment) else ""


def _cell(text: object) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _summary(t: Timeline) -> list[str]:
    lines = ["## Summary", "", "### What changed in the database", ""]
    commits = [(r, c) for r in t.records for c in r.committed]
    if commits:
        lines += ["| when (UTC) | run | what COMMITTED | objects | rows affected |",
                  "| --- | --- | --- | --- | --- |"]
        for r, c in sorted(commits, key=lambda rc: str(rc[1].get("at"))):
            rows = ", ".join(f"{k}: {v:,}" for k, v in (c.get("rows") or {}).items())
            lines.append(f"| {_when(c.get('at'))} | {r.number:02d}-{r.notebook} | "
                         f"{_cell(c.get('what', ''))} | "
                         f"{_cell(', '.join(c.get('objects') or []))} | {_cell(rows)} |")
    else:
        lines.append("Nothing was COMMITted by any recorded run.")
    lines += ["", "### Exports and backups", ""]
    shown = [e for e in t.evidence if e["rows"] != 0 or e["check"] != "matches its manifest"]
    if shown:
        lines += ["| kind | file | rows | SHA-256 | check |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {e['kind']} | {_cell(e['file'])} | {e['rows']} | `{e['sha256']}` | "
                  f"{e['check']} |" for e in shown]
    if len(shown) < len(t.evidence):
        lines += ["", f"{len(t.evidence) - len(shown)} empty export files (0 rows, each "
                  "matching its manifest) are not listed; every manifest.json is."]
    if not t.evidence:
        lines.append("No export or backup in this incident's folder.")
    lines += ["", "### Open follow-ups", ""]
    lines += [f"- [ ] {_cell(f)}" for f in t.run_follow_ups]
    lines += [f"- [ ] {f['checklist']}: {f['text']} (`{f['item']}`, {f['recorded in']})"
              for f in t.follow_ups]
    if not t.run_follow_ups and not t.follow_ups:
        lines.append("None: every run finished and every recorded checklist item is done.")
    return lines + [""]


def _markdown(t: Timeline) -> str:
    lines = [f"# Incident {t.incident_id}: timeline", "",
             f"Built {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC from the incident's records: "
             "the runs' journals and the executed notebooks' own execution metadata "
             "(papermill).", "", *_summary(t),
             f"![one bar per run, the moments that matter marked]({t.picture_path.name})", "",
             "## Runs", "",
             "| # | notebook | operator | started (UTC) | ended (UTC) | outcome |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in t.records:
        outcome = r.outcome
        if r.where:
            outcome += f" at cell {r.where.get('cell')} ({r.where.get('step')})"
        if r.why:
            outcome += f": {r.why}"
        lines.append(f"| {r.number:02d} | {r.notebook} | {r.operator} | {r.started_at} | "
                     f"{r.ended_at} | {_cell(outcome)} |")
    lines += ["", "## Moments", ""]
    if t.moments.empty:
        lines.append("No moment recorded.")
    else:
        lines += ["| time (UTC) | run | notebook | moment | detail |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {_fmt(m.at)} | {m.run} | {m.notebook} | {m.moment} | {_cell(m.text)} |"
                  for m in t.moments.itertuples()]
    lines += ["", "## Steps", "", "| run | notebook | step | start | end | seconds | status |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in t.steps.itertuples():
        seconds = ((s.end - s.start).total_seconds()
                   if _known(s.start) and _known(s.end) else None)
        lines.append(f"| {s.run} | {s.notebook} | {_cell(s.step)} | "
                     f"{_fmt(s.start)} | {_fmt(s.end)} | "
                     f"{'' if seconds is None else f'{seconds:.1f}'} | {s.status} |")
    lines += ["", "## Follow-ups (checklist items left open)", ""]
    lines += [f"- [ ] {f['checklist']}: {f['text']} (`{f['item']}`, {f['recorded in']})"
              for f in t.follow_ups] or ["None: every recorded checklist item is done."]
    return "\n".join(lines) + "\n"


# --- timeline.png ---------------------------------------------------------------------


def _plot(t: Timeline) -> list[dict]:
    """Draw one bar per run with its moments; return what was drawn, read back from the
    axes (and kept in the PNG's metadata under ``playbook:bars``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    runs = [r for r in t.records if _time(r.started_at) is not None]
    fig, ax = plt.subplots(figsize=(12, max(3.0, 1.6 + 0.55 * len(runs))))
    labels = []
    for y, r in enumerate(runs):
        start = _time(r.started_at)
        end = _time(r.ended_at) or start
        width = max((end - start).total_seconds(), 0.5) / 86400  # days, matplotlib's unit
        ax.barh(y, width, left=mdates.date2num(start), height=0.5,
                color=OUTCOME_COLOURS.get(r.outcome, "#9e9e9e"), edgecolor="#424242",
                gid=f"run-{r.number:02d}")
        mode = f", {r.mode}" if r.mode else ""
        labels.append(f"{r.number:02d} {r.notebook}{mode}\n{r.outcome}")
        for entry in r.moments or []:
            label, at = moment_label(entry), _time(entry.get("at"))
            if label is None or at is None:
                continue
            marker, colour, size, offset = MARKERS[label]
            ax.scatter([mdates.date2num(at)], [y + offset], marker=marker, color=colour,
                       s=size, zorder=3, edgecolors="white", linewidths=0.5)
    ax.set_yticks(range(len(runs)))
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_ylim(len(runs) - 0.5, -0.5)
    ax.margins(x=0.03)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.set_xlabel("time (UTC)")
    ax.grid(axis="x", color="#e0e0e0")
    ax.set_title(f"Incident {t.incident_id}: one bar per run")
    handles = [Patch(color=c, label=o) for o, c in OUTCOME_COLOURS.items()]
    handles += [Line2D([], [], linestyle="", marker=m, color=c, markersize=8, label=label)
                for label, (m, c, _s, _o) in MARKERS.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
              frameon=False)
    fig.tight_layout()
    bars = []
    for patch in ax.patches:
        gid = patch.get_gid() or ""
        if not gid.startswith("run-"):
            continue
        left = mdates.num2date(patch.get_x())
        right = mdates.num2date(patch.get_x() + patch.get_width())
        bars.append({"run": gid[4:], "y": round(patch.get_y() + patch.get_height() / 2, 3),
                     "start": left.isoformat(), "end": right.isoformat()})
    fig.savefig(t.picture_path, dpi=100,
                metadata={"Description": json.dumps({"playbook:bars": bars})})
    plt.close(fig)
    return bars
