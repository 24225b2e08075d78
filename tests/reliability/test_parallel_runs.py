"""Two operators (or triage during a rollback) run notebooks at the same time from one
folder: every run must finish on its own kernel, and no run, even one killed with
``kill -9``, leaves kernel socket files in that folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT

PARALLEL_RUNS = 8


def _playbook_run(incident: str, folder: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "playbook", "run", "00_triage", "--incident", incident,
         "-f", str(ROOT / "parameters" / "00_triage.yaml")],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.both_versions
def test_eight_parallel_runs_from_one_folder_all_succeed_and_leave_no_sockets(
        demo_db, tmp_path):
    folder = tmp_path / "oncall"  # the one working directory every operator shares
    folder.mkdir()
    scratch = tmp_path / "tmp"  # TMPDIR of the finishing runs: must be empty afterwards
    scratch.mkdir()
    incidents = tmp_path / "incidents"
    env = {**os.environ, "DATABASE_URL": demo_db.url, "PLAYBOOK_INCIDENTS": str(incidents),
           "TMPDIR": str(scratch)}

    killed = _playbook_run("PAR-KILLED", folder,
                           {**env, "TMPDIR": str(tmp_path / "killed-tmp")})
    (tmp_path / "killed-tmp").mkdir()
    runs = [_playbook_run(f"PAR-{i}", folder, env) for i in range(PARALLEL_RUNS)]
    time.sleep(4)  # the killed run's kernel is starting or running by now
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)

    outputs = [run.communicate(timeout=600)[0] for run in runs]
    failed = {i: out[-600:] for i, (run, out) in enumerate(zip(runs, outputs, strict=True))
              if run.returncode != 0}
    assert not failed, f"{len(failed)} of {PARALLEL_RUNS} parallel runs failed: {failed}"
    for i in range(PARALLEL_RUNS):
        records = list(incidents.glob(f"*-PAR-{i}/*.json"))
        assert len(records) == 1, records
        assert json.loads(records[0].read_text())["outcome"] == "succeeded"

    left = sorted(p.name for p in folder.iterdir())
    assert not [n for n in left if n.startswith("kernel-ipc")], left
    assert not list(scratch.iterdir()), "a finished run left its kernel's socket folder"
