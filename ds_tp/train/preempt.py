"""SIGTERM / SIGINT (preemption, Ctrl-C): finish the current step, save a checkpoint, exit cleanly.

The signal only sets a flag; at each step boundary the ranks agree on it with one small all-reduce
(a rank the launcher has not signalled yet learns it from the others), so every rank saves the same
step. The deepspeed launcher SIGTERMs each rank and SIGKILLs it 30 s later: a step plus a save must
fit in that window. The launching `ds-tp train` then exits with EXIT_PREEMPTED.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import torch

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, resumable
MARKER = "preempted.json"


class StopRequest:
    def __init__(self):
        self.signal_name: str | None = None

    def install(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self, dist, device) -> bool:
        """True on every rank when any rank was signalled (collective: call on all ranks)."""
        flag = torch.tensor([1.0 if self.signal_name else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def write_marker(output_dir: Path, step: int, checkpoint: Path, signal_name: str | None) -> None:
    (output_dir / "ds_tp" / MARKER).write_text(json.dumps({"step": step, "checkpoint": str(checkpoint),
                                                           "signal": signal_name}))


def read_marker(output_dir: Path) -> dict | None:
    path = Path(output_dir) / "ds_tp" / MARKER
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def clear_marker(output_dir: Path) -> None:
    (Path(output_dir) / "ds_tp" / MARKER).unlink(missing_ok=True)
