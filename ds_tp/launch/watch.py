"""Which rank failed first, and an end to a job that would wait on a dead or hung rank.

The deepspeed launcher only says that "a process" exited non-zero and then stops the others, so ds-tp
watches the ranks itself: each rank records its pid and host (and, if it dies of a Python error, that
error) in output_dir/ds_tp/ranks/, touches its record every few seconds (runfiles.HEARTBEAT_S) and
marks a normal end (rank-N.done). A thread in the launching process notes the first rank to fail:
a rank of this host whose pid is gone; or any rank, of any host, whose record has not changed for
`silent_after` seconds (a rank killed on another host, a host that dropped off the network, a stopped
process: the others would wait for it in their next collective until ddp_timeout, 30 min by default).
ds-tp ends the job at once for a silent rank, and `end_after` seconds after a death on this host if the
launcher (which normally stops the other ranks itself) has not.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from ds_tp.runfiles import HEARTBEAT_S, rank_dir


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


def silence_limit(ddp_timeout: float) -> float:
    """Seconds without a heartbeat after which a rank counts as failed: half of ddp_timeout (so the job
    ends before the others' collectives time out), at most 60 s, at least three heartbeats."""
    return max(3 * HEARTBEAT_S, min(60.0, ddp_timeout / 2))


class RankWatcher:
    def __init__(self, output_dir: str | Path, interval: float = 0.05, clear: bool = True,
                 silent_after: float = 60.0, end_after: float = 10.0):
        self.folder = rank_dir(output_dir)
        self.interval = interval
        self.silent_after, self.end_after = silent_after, end_after
        self.deaths: dict[int, tuple[float, dict]] = {}  # rank -> (first seen failed, its record)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._host = socket.gethostname()
        self._since = time.time() - 1.0  # records not touched since are an earlier run's (another machine's clear)
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
        while time.monotonic() < deadline and any(_alive(r["pid"]) for r in self._ranks() if self._local(r)):
            time.sleep(0.1)

    def should_end(self) -> bool:
        """A rank fell silent (it was already waited for), or a rank of this host died end_after seconds ago,
        and the job still runs: the launcher is not ending it."""
        now = time.monotonic()
        return any("silent" in r or now - t > self.end_after for t, r in self.deaths.values())

    def kill_local_ranks(self) -> None:
        for r in self._ranks():
            if self._local(r) and _alive(r["pid"]):
                try:
                    os.kill(r["pid"], signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _local(self, record: dict) -> bool:
        return record.get("host") == self._host

    def _ranks(self) -> list[dict]:
        out = []
        for path in self.folder.glob("rank-*.json"):
            try:
                record = json.loads(path.read_text())
                record["beat"] = path.stat().st_mtime
            except (OSError, ValueError):
                continue
            out.append(record)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for r in self._ranks():
                rank = r["rank"]
                if rank in self.deaths or r["beat"] < self._since or (self.folder / f"rank-{rank}.done").exists():
                    continue
                silent = time.time() - r["beat"]
                if self._local(r) and not _alive(r["pid"]):
                    self.deaths[rank] = (now, r)
                elif silent > self.silent_after:
                    self.deaths[rank] = (now, dict(r, silent=silent))
            self._stop.wait(self.interval)

    def _first(self) -> dict | None:
        """The record of the rank that failed first. Ranks that die together in one poll: a rank that left
        no Python error was killed; the others usually died of it (a peer's connection reset)."""
        if not self.deaths:
            return None

        def order(item):
            seen, rank = item
            return seen, (self.folder / f"rank-{rank['rank']}.error").exists(), rank["rank"]

        return min(self.deaths.values(), key=order)[1]

    def _errors(self) -> list[Path]:
        return sorted(self.folder.glob("rank-*.error"), key=lambda p: p.stat().st_mtime)

    def first_failed_rank(self) -> int | None:
        first = self._first()
        if first is not None:
            return int(first["rank"])
        errors = self._errors()
        return int(errors[0].stem.split("-")[1]) if errors else None

    def describe(self) -> str | None:
        """The rank that failed first, and why."""
        first = self._first()
        if first is None:
            errors = self._errors()
            return f"{errors[0].stem} failed: {errors[0].read_text().strip()}" if errors else None
        error = self.folder / f"rank-{first['rank']}.error"
        if error.exists():
            why = error.read_text().strip()
        elif "silent" in first:
            why = (f"stopped responding (no heartbeat for {first['silent']:.0f} s: killed on its host, the host "
                   "unreachable, or the process stopped)")
        else:
            why = "died without a Python error (killed by a signal or the OOM killer?)"
        return f"rank {first['rank']} (pid {first['pid']} on {first['host']}) failed first: {why}"
