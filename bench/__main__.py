"""Run the benchmarks: ``python -m bench [NAME ...]`` (``make bench``).

Each ``bench/bench_NAME.py`` has ``main(argv) -> int`` and prints its figures
as ratios against a baseline measured in the same run, so that they hold on
a noisy 2-core machine.  Benchmarks are commands, never tests.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = [a for a in argv if not a.startswith("-")] or available()
    status = 0
    for name in names:
        if name not in available():
            print(f"bench: no benchmark {name!r}; have {', '.join(available()) or 'none'}")
            return 2
        print(f"=== {name}", flush=True)
        mod = importlib.import_module(f"bench.bench_{name}")
        status |= mod.main([a for a in argv if a.startswith("-")])
    return status


if __name__ == "__main__":
    sys.exit(main())
