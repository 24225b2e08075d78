"""The document's "Rollback Script Inventory", from what the project knows.

Purpose, data loss and safety come from each change set's ``migration.yaml``; "tested"
comes from the last rehearsal record of the notebook that rolls it back
(``playbook rehearse``), with its date, never from a hand-written cell.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .changesets.migration import known_migrations
from .rehearsal import PASSED, last_rehearsal

SAFETY = {"safe": "✅ Safe", "destructive": "❌ Destructive"}


def tested(notebook: str, root: Path | None = None) -> str:
    rehearsal = last_rehearsal(notebook, root) if notebook else None
    if rehearsal is None:
        return "❌ Not rehearsed"
    day = rehearsal.date[:10]
    if rehearsal.outcome == PASSED:
        return f"✅ Yes (rehearsed {day})"
    return f"❌ Last rehearsal failed ({day})"


def inventory(root: Path | None = None) -> pd.DataFrame:
    rows = []
    for m in known_migrations():
        loss = m.data_loss or "Unknown"
        rows.append({
            "Script": f"`{m.revert.name}`" if m.revert else "(none)",
            "Purpose": m.title,
            "Data Loss": "None" if loss.lower() == "none" else f"⚠️ {loss}",
            "Safety": SAFETY.get(m.safety, m.safety or "unknown"),
            "Tested": tested(m.notebook, root),
            "Notebook": m.notebook,
        })
    return pd.DataFrame(rows, columns=["Script", "Purpose", "Data Loss", "Safety", "Tested",
                                       "Notebook"])


def inventory_markdown(root: Path | None = None) -> str:
    table = inventory(root)
    header = "| " + " | ".join(table.columns) + " |"
    lines = ["## Rollback Script Inventory", "", header,
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)
