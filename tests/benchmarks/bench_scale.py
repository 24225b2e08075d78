"""Issue 18 at scale: the round trip 20 -> 21 as an operator runs it (``playbook run``, one
Jupyter kernel per notebook), and the surgical diff, at 100 k, 1 M and 10 M chat messages.

For each size: the time of notebook 20 (export + drop, execute mode) and 21 (recovery with
its proof), each kernel's peak resident memory (``VmHWM`` of the ipykernel process, read
from /proc while it runs), and the PK diff of a 1 %-damaged copy run in a child process
(its own peak RSS). Then the growth exponent between sizes: time ~ rows^k (1 = linear)
and memory ~ rows^k (0 = flat). Target: kernel peak RSS < 300 MB at 10 M.

``BENCH_SCALE_SIZES`` (default ``100000,1000000,10000000``), ``BENCH_PG=15``.
Run with ``make bench BENCH=scale``: long (about a quarter of an hour on 2 cores).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import bench_coaching
import yaml
from bench_coaching import loaded_database

from playbook.db import localdb

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench-output" / "scale"
SIZES = [int(s) for s in os.environ.get("BENCH_SCALE_SIZES",
                                        "100000,1000000,10000000").split(",")]
PLAYBOOK = Path(sys.executable).with_name("playbook")

DIFF_CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
import psycopg
from playbook import backups, supabase_dumps
from playbook.db.names import QualifiedName
from playbook.procedures import table_diff
url, out = os.environ["BENCH_URL"], Path(sys.argv[1])
chat = QualifiedName("public", "sponsor_chat_messages")
backup = backups.take_backup(url, out / "backup")
with psycopg.connect(url, autocommit=True) as conn:
    conn.execute("DELETE FROM public.sponsor_chat_messages WHERE id % 200 = 1")
    conn.execute("UPDATE public.sponsor_chat_messages SET body = 'edited' WHERE id % 200 = 2")
restored = supabase_dumps.restore_to_scratch(backup, "BENCH_SCRATCH", tables=[str(chat)])
try:
    with restored.scratch.connect() as scratch, psycopg.connect(url) as live:
        started = time.perf_counter()
        report = table_diff.diff_tables(scratch, live, [chat], out / "diff")
        seconds = time.perf_counter() - started
finally:
    restored.scratch.drop()
print(json.dumps({"seconds": seconds, "rows": report.diffs[0].backup_rows,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _kernel_peaks(stop: threading.Event, peaks: dict[int, float]) -> None:
    """Every 0.2 s: the peak RSS (VmHWM) of each ipykernel process of ours, in MB."""
    me = os.getuid()
    while not stop.is_set():
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != me:
                    continue
                if b"ipykernel" not in (entry / "cmdline").read_bytes():
                    continue
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[int(entry.name)] = int(line.split()[1]) / 1024
            except OSError:
                continue
        stop.wait(0.2)


def _run_notebook(stem: str, url: str, rows: int) -> tuple[float, float]:
    """``playbook run`` of one notebook in execute mode, every gate answered yes:
    (seconds, peak RSS of its kernel in MB)."""
    shipped = yaml.safe_load((ROOT / "parameters" / f"{stem}.yaml").read_text())
    answers = {question: "yes" for question in shipped["answers"]}
    params = OUT / f"{stem}-{rows}.yaml"
    params.write_text(yaml.safe_dump({**shipped, "answers": answers, "mode": "execute",
                                      "confirm_database": "bench"}))
    env = {**os.environ, "DATABASE_URL": url, "PLAYBOOK_INCIDENTS": str(OUT / "incidents")}
    stop, peaks = threading.Event(), {}
    watcher = threading.Thread(target=_kernel_peaks, args=(stop, peaks), daemon=True)
    watcher.start()
    started = time.perf_counter()
    done = subprocess.run([str(PLAYBOOK), "run", stem, "--incident", f"SCALE-{rows}",
                           "-f", str(params)], env=env, capture_output=True, text=True,
                          cwd=ROOT)
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return seconds, max(peaks.values(), default=float("nan"))


def _diff(url: str, admin: str, rows: int) -> dict:
    import json

    # The URLs (passwords in them) reach the child through its environment, never argv.
    env = {**os.environ, "BENCH_SCRATCH": admin, "BENCH_URL": url}
    done = subprocess.run([sys.executable, "-c", DIFF_CHILD, str(OUT / f"diff-{rows}")],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _exponent(sizes: list[int], values: list[float]) -> str:
    if len(sizes) < 2 or min(values) <= 0:
        return "n/a"
    return f"{math.log(values[-1] / values[0]) / math.log(sizes[-1] / sizes[0]):.2f}"


def main() -> list[str]:

    lines, figures = [], {"20": [], "21": [], "diff": []}
    for rows in SIZES:
        bench_coaching.ROWS = rows
        with loaded_database("bench-scale", OUT) as (url, loaded):
            admin = localdb.database_url_for(url, "postgres")
            lines.append(f"{rows:,} messages: {loaded}")
            for stem, key in (("20_rollback_coaching_tables", "20"),
                              ("21_recover_coaching_tables", "21")):
                seconds, rss = _run_notebook(stem, url, rows)
                figures[key].append((seconds, rss))
                lines.append(f"  notebook {stem}: {seconds:.1f} s, kernel peak RSS {rss:.0f} MB"
                             f" ({'< 300 MB: holds' if rss < 300 else 'DOES NOT HOLD'})")
            diff = _diff(url, admin, rows)
            figures["diff"].append((diff["seconds"], diff["rss_mb"]))
            lines.append(f"  surgical diff (child process): {diff['seconds']:.1f} s, "
                         f"{diff['rows'] / diff['seconds'] / 1e3:.0f} k rows/s, peak RSS "
                         f"{diff['rss_mb']:.0f} MB")
    for key, name in (("20", "notebook 20"), ("21", "notebook 21"), ("diff", "diff")):
        times = [t for t, _ in figures[key]]
        memory = [m for _, m in figures[key]]
        lines.append(f"growth {name}: time ~ rows^{_exponent(SIZES, times)}, peak RSS ~ "
                     f"rows^{_exponent(SIZES, memory)} (from {SIZES[0]:,} to {SIZES[-1]:,}); "
                     f"between the two largest sizes (less of a kernel's fixed start-up): "
                     f"time ~ rows^{_exponent(SIZES[-2:], times[-2:])}")
    return lines
