"""Non-finite steps are skipped and counted, never applied; too many in a row stop the run.

DeepSpeed's own optimizers skip a step whose gradient norm is inf/NaN and count it in
engine.skipped_steps: the ZeRO 1/2/3 optimizers in every precision, and the bf16 optimizer. Only
ZeRO stage 0 with a plain torch optimizer (fp32, or bf16 through torch autocast) would apply the NaN
step. For that case StepGuard checks the gradients after the last backward of the step (one small
all-reduce) and, if any rank's are non-finite, clears them and flags the optimizer the way DeepSpeed's
own optimizers do (`optimizer.overflow`), so the engine counts the skip and holds the lr schedule.
With no gradients a torch optimizer leaves every parameter and its state untouched; clipping is
switched off for that one step because DeepSpeed's clip_grad_norm_ fails on an empty gradient list.
Without tensor parallelism the norm the guard computed is also the one clipping needs, so StepGuard
clips with it and DeepSpeed's own clipping (a second pass over every gradient) stays off.

DS_TP_FAULT_NONFINITE_STEPS="3,4" (1-based steps) makes rank 0's loss NaN on those steps: the fault
injection the reliability tests use to exercise this path.
"""
from __future__ import annotations

import os

import torch

from ds_tp.train.internals import gradient_clipping, set_gradient_clipping


class NonFiniteTraining(RuntimeError):
    """Training produced non-finite values and cannot go on; the last checkpoint is the last good one."""


def injected_fault_steps() -> set[int]:
    raw = os.environ.get("DS_TP_FAULT_NONFINITE_STEPS", "")
    return {int(x) for x in raw.split(",") if x.strip()}


class StepGuard:
    def __init__(self, engine, rank: int, limit: int, tp: int = 1):
        self.engine, self.limit = engine, limit
        self.checks_grads = not hasattr(engine.optimizer, "overflow")
        self.max_norm = 0.0
        if self.checks_grads and tp == 1 and engine.gradient_clipping() > 0 and not engine.fp16_enabled():
            self.max_norm = engine.gradient_clipping()
            set_gradient_clipping(engine, 0.0)  # clipped here, with the norm computed once
        self.fault_steps = injected_fault_steps() if rank == 0 else set()
        self.skipped_before = engine.skipped_steps
        self.in_a_row = 0
        self.clipping = 0.0
        self.last_norm: torch.Tensor | None = None  # stage 0: this rank's gradient norm, before clipping

    def loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        return loss * float("nan") if step + 1 in self.fault_steps else loss

    def before_optimizer_step(self) -> None:
        """Call after the step's last backward, before its last engine.step() (collective when checking)."""
        if not self.checks_grads:
            return
        import deepspeed.comm as dist
        optimizer = self.engine.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.engine.device)
        self.last_norm = norm
        bad = (~torch.isfinite(norm)).float().reshape(1)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            optimizer.zero_grad(set_to_none=True)
            optimizer.overflow = True  # DeepSpeed's engine: count the skip, keep the lr schedule where it is
            self.clipping = gradient_clipping(self.engine)
            set_gradient_clipping(self.engine, 0.0)
        elif self.max_norm:
            torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, norm, foreach=True)  # scales p.grad

    def after_optimizer_step(self, step: int) -> None:
        if self.checks_grads and getattr(self.engine.optimizer, "overflow", False):
            self.engine.optimizer.overflow = False
            set_gradient_clipping(self.engine, self.clipping)
        skipped = self.engine.skipped_steps
        self.in_a_row = self.in_a_row + 1 if skipped > self.skipped_before else 0
        self.skipped_before = skipped
        if self.in_a_row >= self.limit:
            raise NonFiniteTraining(
                f"{self.in_a_row} optimizer steps in a row skipped for a non-finite loss or gradient norm (up to "
                f"step {step + 1}, max_nonfinite_steps {self.limit}); the weights were not updated by them. Lower "
                "learning_rate or check the data, and resume from the last checkpoint")
