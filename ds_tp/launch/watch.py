"""Which rank failed first. The deepspeed launcher only says that "a process" exited non-zero and
then stops the others, so ds-tp watches its local ranks itself: each rank records its pid (and,
if it dies of a Python error, that error) in output_dir/ds_tp/ranks/; a thread in the launching
process notes the first rank to disappear while the others still run."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from ds_tp.runfiles import rank_dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by the launcher) is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class RankWatcher:
    def __init__(self, output_dir: str | Path, interval: float = 0.05, clear: bool = True):
        self.folder = rank_dir(output_dir)
        self.interval = interval
        self.deaths: dict[int, tuple[float, dict]] = {}  # rank -> (first seen dead, its record)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._host = socket.gethostname()
        if clear:  # machine 0 only: a sibling machine must not wipe the records of a running rank
            for stale in self.folder.glob("rank-*"):
                stale.unlink(missing_ok=True)

    def start(self) -> "RankWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def wait_for_ranks(self, timeout: float) -> None:
        """After the launcher returns: ranks may still be finishing (a group SIGTERM ends DeepSpeed's
        runner at once while launch.py lets the ranks save), so wait for the local ones to exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(r["pid"]) for r in self._ranks()):
            time.sleep(0.1)

    def _ranks(self) -> list[dict]:
        out = []
        for path in self.folder.glob("rank-*.json"):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return [r for r in out if r.get("host") == self._host]

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for r in self._ranks():
                if r["rank"] not in self.deaths and not _alive(r["pid"]):
                    self.deaths[r["rank"]] = (now, r)
            self._stop.wait(self.interval)

    def describe(self) -> str | None:
        """The rank that died first. Ranks that die together in one poll: a rank that left no Python
        error was killed; the others usually died of it (a peer's connection reset)."""
        if not self.deaths:
            errors = sorted(self.folder.glob("rank-*.error"), key=lambda p: p.stat().st_mtime)
            return f"{errors[0].stem} failed: {errors[0].read_text().strip()}" if errors else None

        def order(item):
            seen, rank = item
            return seen, (self.folder / f"rank-{rank['rank']}.error").exists(), rank["rank"]

        _, first = min(self.deaths.values(), key=order)
        error = self.folder / f"rank-{first['rank']}.error"
        why = error.read_text().strip() if error.exists() else \
            "died without a Python error (killed by a signal or the OOM killer?)"
        return f"rank {first['rank']} (pid {first['pid']} on {first['host']}) failed first: {why}"
