"""The optimizer and schedule are built once before launch, so what transformers, torch or bitsandbytes
would say about them at the first rank's start is one line at their YAML key, and the run file holds the
schedule with its step counts (the one decision every rank reads)."""
from __future__ import annotations

import pytest
import yaml
from ds_tp.translators.schedule import Schedule, resolve_schedule, warmup_steps

from ds_tp.errors import UserError
from ds_tp.launch.train import prepare_training
from ds_tp.runfiles import PreparedRun
from ds_tp.train.schedule import EvalStepped, build_scheduler
from tests.ranks.hf_reference import BASE


def prepare(tmp_path, **keys):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**BASE, **keys}))
    _, _, run_file, _, _ = prepare_training(path, ["--output-dir", str(tmp_path / "out")], 1)
    return PreparedRun.read(run_file), path


def test_the_run_file_holds_the_schedule_with_its_step_counts(tmp_path):
    plan, _ = prepare(tmp_path, warmup_ratio=0.25, warmup_steps=None, max_steps=10)
    assert Schedule(**plan.schedule) == Schedule("hf", "cosine", 2, 10)  # floor(0.25 * 10), as Axolotl


@pytest.mark.parametrize("keys, where, says", [
    ({"lr_scheduler": "cosine_with_min_lr"}, "lr_scheduler", "One of min_lr or min_lr_rate should be set"),
    ({"lr_scheduler": "polynomial", "lr_scheduler_kwargs": {"powr": 2}}, "lr_scheduler_kwargs", "powr"),
    ({"optimizer": "sgd", "optim_args": "momentum=fast"}, "optim_args", "fast"),
])
def test_what_the_libraries_refuse_is_one_line_at_its_key(tmp_path, keys, where, says):
    with pytest.raises(UserError) as info:
        prepare(tmp_path, **keys)
    [problem] = info.value.problems
    line = [n for n, text in enumerate((tmp_path / "config.yaml").read_text().splitlines(), 1)
            if text.startswith(f"{where}:")][0]
    assert problem.key == where and problem.where.endswith(f"config.yaml:{line}:1") and says in problem.message
    assert not (tmp_path / "out" / "ds_tp").exists()  # nothing launched, nothing written


def test_eval_driven_schedules_ignore_deepspeeds_per_step_call():
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule, _ = resolve_schedule({"lr_scheduler": "reduce_lr_on_plateau", "val_set_size": 0.1,
                                    "lr_scheduler_kwargs": {"patience": 0, "factor": 0.5}}, 10)
    scheduler = build_scheduler(schedule, optimizer)
    assert isinstance(scheduler, EvalStepped)
    for _ in range(5):
        scheduler.step()  # what DeepSpeed's engine.step() calls
    assert optimizer.param_groups[0]["lr"] == 1.0
    scheduler.step(2.0)
    scheduler.step(3.0)  # worse: halved
    assert scheduler.get_last_lr() == [0.5]
    state = scheduler.state_dict()
    fresh = build_scheduler(schedule, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5))
    fresh.load_state_dict(state)
    assert fresh.inner.best == 2.0


@pytest.mark.parametrize("cfg, total, expected", [
    ({}, 1000, 30), ({}, 40, 2), ({}, 20, 0), ({"warmup_steps": 1}, 100, 2), ({"warmup_ratio": 0.05}, 99, 4),
    ({"warmup_steps": 7}, None, 7), ({"warmup_ratio": 0.1}, None, None), ({}, 10_000, 100)])
def test_axolotls_warmup_rule(cfg, total, expected):
    """min(3% of the steps, 100) when neither key is set; floor of the ratio; a single step becomes 2
    (Axolotl's rule, compared with Axolotl's own code in tests/axolotl_diff/test_same_schedule.py)."""
    assert warmup_steps(cfg, total) == expected


def test_new_tokens_with_an_adapter_need_the_embeddings_trained(tmp_path):
    """A special token the tokenizer lacks grows the embeddings; with an adapter those rows only train when
    embed_tokens and lm_head are in lora_modules_to_save (Axolotl refuses it too)."""
    lora = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}
    many = {"additional_special_tokens": [f"<|extra{i}|>" for i in range(40)]}  # past the padded vocab rows
    with pytest.raises(UserError) as info:
        prepare(tmp_path / "a", **lora, special_tokens=many)
    [problem] = info.value.problems
    assert problem.key == "special_tokens" and "new rows would never train" in problem.message
    plan, _ = prepare(tmp_path / "b", **lora, special_tokens=many, lora_modules_to_save=["embed_tokens", "lm_head"])
    assert plan.resolved.adapter.modules_to_save == ["embed_tokens", "lm_head"]
