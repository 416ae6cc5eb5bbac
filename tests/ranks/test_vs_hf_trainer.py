"""ds-tp trains like transformers.Trainer, the trainer Axolotl runs: for every lr_scheduler and optimizer
name ds-tp accepts from transformers, one process of ds-tp and Trainer (same model, same rows in the
same order, TrainingArguments as Axolotl maps the config) log the same loss at every one of 12 steps
(within 1e-5), the same learning rate exactly, and the same gradient norm. AdamW with weight decay 0.3
and 3 warm-up steps is the default case, so HF Trainer's decay groups and warm-up are in every run.

Axolotl's own schedules (rex, one_cycle, cosine_min_lr_ratio, ...) are compared with Axolotl's
scheduler code in tests/axolotl_diff/test_same_schedule.py."""
from __future__ import annotations

import pytest

from tests.ranks.hf_reference import BASE, ds_tp_rows, hf_train, prepare, train_all

PLATEAU = {"val_set_size": 0.1, "eval_steps": 2}
SCHEDULES = {
    "linear": {"lr_scheduler": "linear"},
    "cosine": {},
    "cosine_with_restarts": {"lr_scheduler": "cosine_with_restarts", "lr_scheduler_kwargs": {"num_cycles": 2}},
    "polynomial": {"lr_scheduler": "polynomial", "lr_scheduler_kwargs": {"power": 2.0, "lr_end": 1e-4}},
    "constant": {"lr_scheduler": "constant"},  # HF's constant ignores the 3 warm-up steps
    "constant_with_warmup": {"lr_scheduler": "constant_with_warmup"},
    "inverse_sqrt": {"lr_scheduler": "inverse_sqrt"},
    "cosine_with_min_lr": {"lr_scheduler": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
    "cosine_warmup_with_min_lr": {"lr_scheduler": "cosine_warmup_with_min_lr",
                                  "lr_scheduler_kwargs": {"min_lr": 1e-4, "warmup_lr_rate": 0.1}},
    "warmup_stable_decay": {"lr_scheduler": "warmup_stable_decay", "lr_scheduler_kwargs": {"num_decay_steps": 4}},
    "reduce_lr_on_plateau": {"lr_scheduler": "reduce_lr_on_plateau", **PLATEAU,
                             "lr_scheduler_kwargs": {"patience": 0, "factor": 0.5, "threshold": 0.1}},
    "greedy": {"lr_scheduler": "greedy", **PLATEAU, "lr_scheduler_kwargs": {"patience": 1, "min_lr": 1e-5}},
    "no_warmup": {"warmup_steps": 0},
}
OPTIMIZERS = {
    "adamw_torch_fused": {"optimizer": "adamw_torch_fused"},
    "adam_betas_eps": {"adam_beta1": 0.8, "adam_beta2": 0.95, "adam_epsilon": 1e-6},
    "sgd": {"optimizer": "sgd", "learning_rate": 0.05},
    "sgd_momentum": {"optimizer": "sgd", "learning_rate": 0.05, "optim_args": {"momentum": 0.9, "nesterov": True}},
    "adagrad": {"optimizer": "adagrad", "learning_rate": 0.01},
    "rmsprop": {"optimizer": "rmsprop", "learning_rate": 1e-3},
    "adafactor": {"optimizer": "adafactor"},
    "adamw_bnb_8bit": {"optimizer": "adamw_bnb_8bit"},
    "paged_adamw_32bit": {"optimizer": "paged_adamw_32bit"},
    "lion_32bit": {"optimizer": "lion_32bit", "learning_rate": 2e-4},
    "lion_8bit": {"optimizer": "lion_8bit", "learning_rate": 2e-4},
    "rmsprop_bnb_8bit": {"optimizer": "rmsprop_bnb_8bit", "learning_rate": 1e-3},
    "ademamix": {"optimizer": "ademamix", "optim_args": {"alpha": 4.0}},
    "ademamix_8bit": {"optimizer": "ademamix_8bit"},
}
CASES = {**SCHEDULES, **OPTIMIZERS}


@pytest.fixture(scope="module")
def ds_tp_runs(tmp_path_factory):
    """Every case prepared, then trained by ds-tp in one spawned process (a world of 1)."""
    folder = tmp_path_factory.mktemp("vs_hf")
    runs = {name: prepare(folder, name, {**BASE, **case}, folder / "prepared") for name, case in CASES.items()}
    train_all(list(runs.values()))
    return runs


@pytest.mark.parametrize("name", CASES)
def test_same_losses_rates_and_norms_as_hf_trainer(ds_tp_runs, tmp_path, name):
    ours, our_evals = ds_tp_rows(ds_tp_runs[name])
    theirs, their_evals = hf_train({**BASE, **CASES[name]}, ds_tp_runs[name], tmp_path / "hf")
    assert [r["step"] for r in ours] == [h["step"] for h in theirs] == list(range(1, 13))
    assert [r["lr"] for r in ours] == [h["learning_rate"] for h in theirs]  # exactly
    assert [r["loss"] for r in ours] == pytest.approx([h["loss"] for h in theirs], abs=1e-5)
    assert [r["grad_norm"] for r in ours] == pytest.approx([h["grad_norm"] for h in theirs], rel=1e-4)
    assert ours[-1]["loss"] < ours[0]["loss"] - 0.1  # it trained
    if our_evals or their_evals:
        assert [r["eval_loss"] for r in our_evals] == pytest.approx([h["eval_loss"] for h in their_evals], abs=1e-5)


def test_the_metric_schedules_lowered_the_rate(ds_tp_runs):
    """reduce_lr_on_plateau and greedy were really driven by eval_loss here: the rate moved."""
    for name in ("reduce_lr_on_plateau", "greedy"):
        rates = [r["lr"] for r in ds_tp_rows(ds_tp_runs[name])[0]]
        assert min(rates) < max(rates), (name, rates)
