#!/usr/bin/env python
"""Cold start of `ds-tp validate` and `ds-tp translate` (target: at most 0.5 s on a 2-core machine).

Runs each command N times as a fresh process (the installed entry point, as a user would) and prints
the median and worst wall time, plus the same for `python -c pass` as the interpreter's own floor.
A figure, not a test: timing depends on the machine.
"""
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DS_TP = str(Path(sys.executable).parent / "ds-tp")
CONFIG = str(ROOT / "examples" / "card" / "scenario-2.yaml")


def timed(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - start)
    return out


def main(runs: int = 7) -> None:
    cases = {"python -c pass": [sys.executable, "-c", "pass"],
             "ds-tp validate": [DS_TP, "validate", CONFIG, "--world-size", "16"],
             "ds-tp translate": [DS_TP, "translate", CONFIG, "--world-size", "16"],
             "ds-tp translate --explain": [DS_TP, "translate", CONFIG, "--world-size", "16", "--explain"]}
    for name, cmd in cases.items():
        times = timed(cmd, runs)
        print(f"{name:28s} median {statistics.median(times):.3f} s  worst {max(times):.3f} s  ({runs} runs)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
