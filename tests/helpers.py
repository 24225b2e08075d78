"""Small helpers the tests share (running the CLI as an operator would)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """``playbook ARGS`` in a subprocess, as the operator types it."""
    return subprocess.run(
        [sys.executable, "-m", "playbook", *args],
        env=env, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout,
    )
