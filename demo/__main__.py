"""``make demo``: every simulator and server of the suite on 127.0.0.1.

Each program has a scenario module in this folder (not part of the shipped
packages):
``run(report)`` starts its simulator and server as real processes on free
loopback ports, drives them as a user at a beamline would, records what it
saw with ``report.step`` and ``report.check``, and stops everything again.
This module runs them in turn and prints a readable summary.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback

# section name -> scenario module in this folder
SCENARIOS = {
    "common": "runtime",
    "marserver": "marserver",
    "specsrv.hdw": "hdw",
    "specsrv": "specsrv",
    "archonsrv": "archon",
    "mrt": "mrt",
}


class Report:
    def __init__(self, section: str) -> None:
        self.section = section
        self.steps: list[str] = []
        self.checks: list[tuple[str, bool, str]] = []

    def step(self, text: str) -> None:
        self.steps.append(text)
        print(f"  {self.section}: {text}", flush=True)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((what, bool(ok), detail))
        mark = "ok  " if ok else "FAIL"
        print(f"  {self.section}: [{mark}] {what}{(' - ' + detail) if detail else ''}", flush=True)
        return bool(ok)

    @property
    def failed(self) -> int:
        return sum(1 for _, ok, _ in self.checks if not ok)


def load(pkg: str):
    module = SCENARIOS.get(pkg)
    if module is None:
        print(f"no demo scenario named {pkg!r}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return None
    return importlib.import_module(f"demo.{module}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wanted = [a for a in argv if not a.startswith("-")] or list(SCENARIOS)
    reports: list[tuple[Report, float, str | None]] = []
    print("beamline-servers demo: every simulator and server on 127.0.0.1\n", flush=True)
    for pkg in wanted:
        mod = load(pkg)
        if mod is None:
            continue
        rep = Report(pkg)
        print(f"== {pkg}: {(mod.__doc__ or '').strip().splitlines()[0]}", flush=True)
        t0 = time.monotonic()
        crash = None
        try:
            mod.run(rep)
        except Exception as exc:  # noqa: BLE001 - one demo's failure must not hide the others
            crash = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        reports.append((rep, time.monotonic() - t0, crash))
        print(flush=True)
    print("Summary")
    print("-------")
    bad = 0
    for rep, dt, crash in reports:
        n = len(rep.checks)
        ok = n - rep.failed
        state = "OK" if not rep.failed and not crash else "FAILED"
        bad += rep.failed + (1 if crash else 0)
        print(
            f"{rep.section:<12} {state:<7} {ok}/{n} checks in {dt:5.1f} s"
            + (f"  ({crash})" if crash else "")
        )
    print(f"\n{'all demos passed' if not bad else f'{bad} problem(s)'}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
