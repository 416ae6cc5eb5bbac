"""The torch scheduler for translators.schedule's decision (the Schedule in the run file), handed to
deepspeed.initialize as a factory: DeepSpeed calls it with the optimizer it built (ZeRO's or the
client's) and steps it after every optimizer step it does not skip, as HF Trainer does. Its state is
in DeepSpeed's checkpoints, so a resumed run continues mid-schedule.

reduce_lr_on_plateau and greedy step on eval_loss instead: EvalStepped ignores DeepSpeed's per-step
call and the loop steps it after each evaluation (Trainer.evaluate), as HF Trainer does."""
from __future__ import annotations

from functools import partial

from ds_tp.translators.schedule import Schedule, lr_factor


class EvalStepped:
    """A metric-driven scheduler that DeepSpeed may hold and save: step() without a metric (DeepSpeed's
    call after each optimizer step) does nothing, step(eval_loss) steps the scheduler."""

    def __init__(self, inner):
        self.inner = inner
        self.optimizer = inner.optimizer

    def step(self, metrics: float | None = None, **_):
        if metrics is not None:
            self.inner.step(metrics)

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {k: v for k, v in self.inner.state_dict().items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def schedule_of(plan) -> Schedule:
    return Schedule(**plan.schedule)


def scheduler_factory(schedule: Schedule):
    return partial(build_scheduler, schedule)


def build_scheduler(schedule: Schedule, optimizer):
    import torch

    if schedule.kind in ("hf", "metric"):
        from transformers import get_scheduler

        built = get_scheduler(schedule.name, optimizer, num_warmup_steps=schedule.warmup,
                              num_training_steps=schedule.total, scheduler_specific_kwargs=dict(schedule.kwargs))
        return EvalStepped(built) if schedule.kind == "metric" else built
    if schedule.kind == "one_cycle":
        kwargs = {"pct_start": schedule.warmup / schedule.total, "anneal_strategy": "cos", **schedule.kwargs}
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=optimizer.param_groups[0]["lr"],
                                                   total_steps=schedule.total, **kwargs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, schedule))


def schedule_problem(schedule: Schedule, lr: float) -> str | None:
    """Build the scheduler once on a one-tensor optimizer: transformers' or torch's own complaint about
    lr_scheduler_kwargs (a missing min_lr, an unknown argument), or None."""
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    try:
        build_scheduler(schedule, optimizer)
    except (TypeError, ValueError, KeyError) as exc:
        return f"{schedule.name}: {exc}"
    return None
