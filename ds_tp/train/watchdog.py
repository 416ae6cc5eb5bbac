"""Two ways a run ends early, as Axolotl's trainer ends them.

Early stopping (HF's EarlyStoppingCallback, which Axolotl adds for early_stopping_patience): no lower
eval_loss for N evaluations in a row ends the run, and the model is saved as at the end of training.
Its count is saved in each checkpoint, so a resumed run counts on.

Axolotl's loss watchdog: stop when the logged loss stays above loss_watchdog_threshold for
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


class EarlyStopping:
    """early_stopping_patience: stop after this many evaluations in a row without a lower eval_loss."""

    def __init__(self, patience: int | None, saved: dict | None = None):
        self.patience = patience
        self.best: float | None = (saved or {}).get("best")
        self.without_improvement = int((saved or {}).get("without_improvement", 0))

    def state(self) -> dict:
        return {"best": self.best, "without_improvement": self.without_improvement}

    def should_stop(self, eval_loss: float) -> bool:
        if not self.patience:
            return False
        if self.best is None or eval_loss < self.best:
            self.best, self.without_improvement = eval_loss, 0
        else:
            self.without_improvement += 1
        return self.without_improvement >= self.patience
