"""`make bench`: run every tests/benchmarks/bench_*.py and print its figures.

Each module has ``main() -> list[str]`` returning lines to print (figures and ratios
against the baseline its issue names). Benchmarks start their own throwaway cluster
under bench-output/; they are never part of `make test`.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(selected: list[str]) -> int:
    modules = sorted(HERE.glob("bench_*.py"))
    if selected:
        modules = [m for m in modules if any(s in m.stem for s in selected)]
    for path in modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(HERE))
        spec.loader.exec_module(module)
        started = time.perf_counter()
        print(f"== {path.stem}", flush=True)
        for line in module.main():
            print(f"   {line}", flush=True)
        print(f"   ({time.perf_counter() - started:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
