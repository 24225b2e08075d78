"""The post-mortem picture of a long incident still reads on one screen: ten runs, one bar
each, the moments marked, and the summary naming each COMMIT."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image

from playbook import journal
from playbook.records import DIED, FAILED, STOPPED, SUCCEEDED
from playbook.timeline import build_timeline

OUTCOMES = [SUCCEEDED, STOPPED, SUCCEEDED, FAILED, SUCCEEDED, DIED, SUCCEEDED, SUCCEEDED,
            STOPPED, SUCCEEDED]


def _record(folder: Path, number: int, start: datetime, outcome: str) -> None:
    """A finished record as `playbook run` leaves it (its notebook is not needed here),
    with a gate answered and, for every other run, a COMMIT of a few rows."""
    moments = [{"id": f"g{number}", "at": (start + timedelta(seconds=5)).isoformat(),
                "event": journal.GATE, "open": outcome != STOPPED, "text": "gate"}]
    if outcome == SUCCEEDED and number % 2:
        moments.append({"id": f"c{number}", "at": (start + timedelta(seconds=9)).isoformat(),
                        "event": journal.COMMITTED, "what": f"change {number}",
                        "objects": [f"public.t{number}"], "rows": {f"public.t{number}": number},
                        "text": f"change {number} COMMITTED"})
    if outcome == DIED:
        moments.append({"id": "d", "at": (start + timedelta(seconds=12)).isoformat(),
                        "event": journal.DIED, "text": "the kernel died"})
    base = folder / f"{number:02d}-nb{number}"
    record = {"incident_id": "INC-10", "number": number, "notebook": f"nb{number}",
              "operator": "alice", "started_at": start.isoformat(timespec="seconds"),
              "ended_at": (start + timedelta(seconds=20)).isoformat(timespec="seconds"),
              "outcome": outcome, "mode": "execute", "moments": moments,
              "files": {"notebook": f"{base}.ipynb", "html": f"{base}.html",
                        "record": f"{base}.json", "journal": f"{base}.journal.jsonl"}}
    Path(f"{base}.json").write_text(json.dumps(record))


def test_ten_runs_draw_ten_bars_on_one_screen_and_the_summary_names_each_commit(tmp_path):
    folder = tmp_path / "incidents" / "2026-12-02-INC-10"
    folder.mkdir(parents=True)
    start = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    for number, outcome in enumerate(OUTCOMES, 1):
        _record(folder, number, start + timedelta(minutes=3 * number), outcome)

    timeline = build_timeline("INC-10", tmp_path / "incidents")

    with Image.open(timeline.picture_path) as picture:
        width, height = picture.size
        drawn = json.loads(picture.text["Description"])["playbook:bars"]
    assert width <= 1920 and height <= 1080
    assert [bar["run"] for bar in drawn] == [f"{n:02d}" for n in range(1, 11)]
    assert len({bar["y"] for bar in drawn}) == 10
    first = drawn[0]
    assert first["start"].startswith("2026-12-02T03:03:00")
    assert first["end"].startswith("2026-12-02T03:03:20")

    summary = timeline.markdown_path.read_text().split("## Runs")[0]
    committed = [n for n, o in enumerate(OUTCOMES, 1) if o == SUCCEEDED and n % 2]
    for number in committed:
        assert f"| {number:02d}-nb{number} | change {number} | public.t{number} | " \
               f"public.t{number}: {number} |" in summary
    assert summary.count("| change ") == len(committed)
    assert "Run 06-nb6 DIED" in summary and "Run 04-nb4 failed" in summary
