"""Axolotl's loss watchdog: stop when the logged loss stays above loss_watchdog_threshold for
loss_watchdog_patience logged steps in a row (default 3), as a diverged run wastes the GPUs.

Every rank sees the same logged loss (it is all-reduced), so every rank stops at the same step. The run
ends with an error naming the step and the loss; the last checkpoint is the last good one.
"""
from __future__ import annotations

DEFAULT_PATIENCE = 3


class LossDiverged(RuntimeError):
    """The loss watchdog stopped the run."""


class LossWatchdog:
    def __init__(self, threshold: float | None, patience: int | None):
        self.threshold = threshold
        self.patience = int(patience or DEFAULT_PATIENCE)
        self.above = 0

    def check(self, step: int, loss: float) -> None:
        """Call with each logged step's loss; raises LossDiverged when the patience runs out."""
        if self.threshold is None:
            return
        self.above = self.above + 1 if loss > self.threshold else 0
        if self.above >= self.patience:
            raise LossDiverged(f"loss watchdog: loss {loss:.4g} above loss_watchdog_threshold {self.threshold:g} for "
                               f"{self.above} logged steps in a row (up to step {step}); stopped. Lower learning_rate "
                               "or check the data, and resume from the last checkpoint")
