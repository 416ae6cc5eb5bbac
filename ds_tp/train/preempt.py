"""SIGTERM / SIGINT (preemption, Ctrl-C): finish the step, save a checkpoint if it fits the grace period, exit.

The signal only sets a flag. At each step boundary every rank starts an asynchronous all-reduce (MAX,
on a CPU gloo group: no device sync in the hot loop) of [signalled, seconds since the signal, last
step's seconds, last save's seconds], and reads the previous boundary's result. A rank the launcher
has not signalled yet learns it from the others, and since every rank decides from the same reduced
numbers, all of them stop after the same step and agree on whether a save fits:

    seconds since signal + one more step + last save  <=  preemption_grace_period

A run that has not saved yet assumes the save fits. The deepspeed launcher (and torchrun) SIGTERM
each rank and SIGKILL it 30 s later, so the default grace period is 25 s; a longer one only helps
when the ranks are signalled by something that waits longer (SLURM's KillWait, Kubernetes'
terminationGracePeriodSeconds). `ds-tp train` then exits with EXIT_PREEMPTED either way.
"""
from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, resumable
MARKER = "preempted.json"
DEFAULT_GRACE_S = 25.0
LAUNCHER_KILL_TIMER_S = 30.0  # deepspeed.launcher.launch.terminate_process_tree, torchrun's close()


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None
        self.signalled_at: float | None = None

    def install(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.signalled_at is None:  # the first one: after a Ctrl-C the launcher adds its own SIGTERM
            self.signal_name = signal.Signals(signum).name
            self.signalled_at = time.monotonic()


@dataclass
class Stop:
    save: bool
    waited_s: float  # seconds since the first rank was signalled, at the previous boundary
    step_s: float
    save_s: float


class StopAgreement:
    def __init__(self, request: StopRequest, group, grace_s: float):
        self.request, self.group, self.grace_s = request, group, grace_s
        self.pending = None

    def poll(self, step_s: float, save_s: float) -> Stop | None:
        """Collective (call on every rank at every boundary): the stop agreed one boundary ago, or None."""
        import torch.distributed as tdist

        agreed = None
        if self.pending is not None:
            work, values = self.pending
            if work is not None:
                work.wait()
            agreed = values.tolist()
        r = self.request
        values = torch.tensor([1.0 if r.signal_name else 0.0,
                               time.monotonic() - r.signalled_at if r.signalled_at else 0.0, step_s, save_s],
                              dtype=torch.float64)
        work = None
        if self.group is not None:
            work = tdist.all_reduce(values, op=tdist.ReduceOp.MAX, group=self.group, async_op=True)
        self.pending = (work, values)
        if not agreed or agreed[0] == 0:
            return None
        flag, waited, step_s, save_s = agreed
        return Stop(save=waited + step_s + save_s <= self.grace_s, waited_s=waited, step_s=step_s, save_s=save_s)

    def close(self) -> None:
        if self.pending is not None and self.pending[0] is not None:
            self.pending[0].wait()
        self.pending = None


def write_marker(output_dir: Path, step: int, checkpoint: Path | None, signal_name: str | None,
                 why_not_saved: str | None = None) -> None:
    (output_dir / "ds_tp" / MARKER).write_text(json.dumps({
        "step": step, "checkpoint": str(checkpoint) if checkpoint else None, "signal": signal_name,
        "why_not_saved": why_not_saved}))


def read_marker(output_dir: Path) -> dict | None:
    path = Path(output_dir) / "ds_tp" / MARKER
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def clear_marker(output_dir: Path) -> None:
    (Path(output_dir) / "ds_tp" / MARKER).unlink(missing_ok=True)
