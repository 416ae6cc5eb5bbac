"""Axolotl's own learning-rate shapes and warm-up rule, against Axolotl 0.21.0's code: the rate of every
optimizer step equal, for the schedules Axolotl defines itself, and whole runs equal to HF Trainer with
Axolotl's SchedulerMixin and training arguments (transformers' own schedules are checked against HF
Trainer in tests/ranks/test_vs_hf_trainer.py)."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from ds_tp.translators.schedule import resolve_schedule, warmup_steps

from ds_tp.train.schedule import build_scheduler
from tests.ranks.hf_reference import BASE, ds_tp_rows, hf_train, prepare, train_all


def axolotl_trainer_parts():
    """Axolotl's trainer builder, training arguments and scheduler mixin. Its callbacks module imports
    wandb at the top, which the tier never calls: when wandb is not installed an empty module stands in
    for that one import, and is removed again, so nothing else in the session sees it."""
    stub = None
    if "wandb" not in sys.modules and importlib.util.find_spec("wandb") is None:
        stub = types.ModuleType("wandb")
        stub.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        sys.modules["wandb"] = stub
    try:
        from axolotl.core.builders.base import TrainerBuilderBase
        from axolotl.core.trainers.mixins.scheduler import SchedulerMixin
        from axolotl.core.training_args import AxolotlTrainingArguments
    finally:
        if stub is not None:
            del sys.modules["wandb"]
    return TrainerBuilderBase, SchedulerMixin, AxolotlTrainingArguments

PEAK, TOTAL = 2e-3, 40


def rates(scheduler, optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=PEAK)


def axolotls(kind: str, warm: int, opt, floor: float = 0.0, held: float = 0.0):
    from axolotl.utils import schedulers as ax

    if kind == "rex":
        return ax.RexLR(opt, max_lr=PEAK, min_lr=PEAK * floor, total_steps=TOTAL, num_warmup_steps=warm)
    if kind == "cosine_quadratic":
        return ax.get_cosine_schedule_with_quadratic_warmup(opt, num_warmup_steps=warm, num_training_steps=TOTAL)
    if kind == "cosine_min_lr":
        return ax.get_cosine_schedule_with_min_lr(opt, num_warmup_steps=warm, num_training_steps=TOTAL,
                                                  min_lr_ratio=floor)
    return ax.get_cosine_schedule_with_warmup_decay_constant(opt, num_warmup_steps=warm, num_training_steps=TOTAL,
                                                             min_lr_ratio=floor, constant_lr_ratio=held)


CASES = [
    ("rex", {"lr_scheduler": "rex"}, 0.0, 0.0),
    ("rex", {"lr_scheduler": "rex", "cosine_min_lr_ratio": 0.1}, 0.1, 0.0),
    ("cosine_quadratic", {"lr_quadratic_warmup": True}, 0.0, 0.0),
    ("cosine_min_lr", {"cosine_min_lr_ratio": 0.1}, 0.1, 0.0),
    ("cosine_constant", {"cosine_min_lr_ratio": 0.2, "cosine_constant_lr_ratio": 0.7}, 0.2, 0.7),
]


@pytest.mark.parametrize("warm", [0, 5])
@pytest.mark.parametrize("kind, cfg, floor, held", CASES, ids=lambda v: str(v))
def test_axolotls_own_schedules(kind, cfg, floor, held, warm):
    schedule, findings = resolve_schedule({"lr_scheduler": "cosine", **cfg, "warmup_steps": warm}, TOTAL)
    assert schedule.kind == kind and not [f for f in findings if f.level == "error"]
    ours_opt, theirs_opt = optimizer(), optimizer()
    ours = rates(build_scheduler(schedule, ours_opt), ours_opt, TOTAL + 3)  # and past the end
    theirs = rates(axolotls(kind, warm, theirs_opt, floor, held), theirs_opt, TOTAL + 3)
    # RexLR sets max_lr * fraction, ds-tp a LambdaLR factor of the peak: equal to within one rounding
    assert ours == pytest.approx(theirs, rel=1e-15, abs=0)
    assert len(set(ours)) > 5  # the rate really moves


@pytest.mark.parametrize("cfg", [{}, {"warmup_steps": 7}, {"warmup_steps": 1}, {"warmup_ratio": 0.1},
                                 {"warmup_ratio": 0.01}, {"warmup_ratio": 0.0}])
@pytest.mark.parametrize("total", [10, 40, 33, 5000])
def test_warmup_steps_as_axolotl_counts_them(cfg, total):
    from axolotl.utils.dict import DictDefault

    TrainerBuilderBase = axolotl_trainer_parts()[0]

    builder = SimpleNamespace(cfg=DictDefault({"logging_steps": 1, **cfg}))
    kwargs = {}
    TrainerBuilderBase._configure_warmup_and_logging(builder, total, kwargs)
    assert warmup_steps(cfg, total) == kwargs["warmup_steps"]


RUNS = {
    "rex": {"lr_scheduler": "rex"},
    "rex_floor": {"lr_scheduler": "rex", "cosine_min_lr_ratio": 0.1},
    "one_cycle": {"lr_scheduler": "one_cycle"},
    "one_cycle_kwargs": {"lr_scheduler": "one_cycle", "lr_scheduler_kwargs": {"div_factor": 10.0, "pct_start": 0.5}},
    "cosine_quadratic": {"lr_quadratic_warmup": True},
    "cosine_min_lr": {"cosine_min_lr_ratio": 0.1},
    "cosine_constant": {"cosine_min_lr_ratio": 0.2, "cosine_constant_lr_ratio": 0.6},
    "default_warmup": {"warmup_steps": None, "max_steps": 40},  # Axolotl's min(3%, 100) -> 1 -> 2 steps
}


@pytest.fixture(scope="module")
def ds_tp_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("axolotl_schedules")
    runs = {name: prepare(folder, name, {k: v for k, v in {**BASE, **case}.items() if v is not None},
                          folder / "prepared") for name, case in RUNS.items()}
    train_all(list(runs.values()))
    return runs


@pytest.mark.parametrize("name", RUNS)
def test_whole_runs_equal_hf_trainer_with_axolotls_scheduler(ds_tp_runs, tmp_path, name):
    from axolotl.utils.dict import DictDefault

    builder_cls, mixin, args_cls = axolotl_trainer_parts()
    cfg = {**BASE, **RUNS[name]}
    if cfg["warmup_steps"] is None:  # the warm-up Axolotl's builder would hand HF Trainer
        kwargs = {}
        builder_cls._configure_warmup_and_logging(SimpleNamespace(cfg=DictDefault({})), cfg["max_steps"], kwargs)
        cfg["warmup_steps"] = kwargs["warmup_steps"]
        assert cfg["warmup_steps"] == 2
    extra = {k: cfg[k] for k in ("cosine_min_lr_ratio", "cosine_constant_lr_ratio", "lr_quadratic_warmup") if k in cfg}
    ours, _ = ds_tp_rows(ds_tp_runs[name])
    theirs, _ = hf_train({**cfg, **extra}, ds_tp_runs[name], tmp_path / "hf", trainer_mixins=(mixin,),
                         args_cls=lambda **kw: args_cls(**kw, **extra))
    assert [r["lr"] for r in ours] == [h["learning_rate"] for h in theirs]
    assert [r["loss"] for r in ours] == pytest.approx([h["loss"] for h in theirs], abs=1e-5)
    assert len(ours) == len(theirs) == cfg["max_steps"] and len({r["lr"] for r in ours}) > 3
