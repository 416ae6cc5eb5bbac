"""launch/resume.py: which resumes go through the reshard path and how the global batch is kept or refused."""
from pathlib import Path

import pytest

from ds_tp.config import load_config
from ds_tp.errors import UserError
from ds_tp.launch.resume import plan_resume
from tests.conftest import MINIMAL

CKPT = Path("out/checkpoint-3")


def _state(dp_shard=2, tp=1, cp=1, micro=1, gas=4, adapter=None):
    dp = dp_shard
    return {"step": 3, "world": dp_shard * tp * cp, "global_batch": micro * gas * dp, "optimizer_params": [["w"]],
            "layout": {"dp_replicate": 1, "dp_shard": dp_shard, "tp": tp, "cp": cp},
            "config": {"micro_batch_size": micro, "gradient_accumulation_steps": gas}, "run": {"adapter": adapter}}


def _cfg(write_config, world, extra=""):
    return load_config(write_config(MINIMAL + extra), (), world)


def test_the_same_layout_is_deepspeeds_own_load(write_config):
    cfg = _cfg(write_config, 2)
    assert plan_resume(cfg, CKPT, _state(), False) == (False, [])


def test_fewer_ranks_keep_the_global_batch_through_gas(write_config):
    cfg = _cfg(write_config, 1)
    other, notes = plan_resume(cfg, CKPT, _state(dp_shard=2), False)
    assert other and cfg.values["gradient_accumulation_steps"] == 8
    assert any("gradient_accumulation_steps 4 -> 8: keeps the global batch of 8 sequences" in n for n in notes)


def test_tp_changes_keep_gas(write_config):
    cfg = _cfg(write_config, 2, "dp_shard_size: 1\ntensor_parallel_size: 2\n")
    other, notes = plan_resume(cfg, CKPT, _state(dp_shard=1), False)
    assert other and cfg.values["gradient_accumulation_steps"] == 4 and len(notes) == 1


def test_a_batch_that_cannot_be_kept_is_refused_unless_allowed(write_config):
    cfg = _cfg(write_config, 3)  # global batch 4 x 3 = 12 against the checkpoint's 8: 8 / 3 is not whole
    with pytest.raises(UserError) as info:
        plan_resume(cfg, CKPT, _state(dp_shard=2), False)
    assert "global batch of 8 sequences; this run's is 12" in str(info.value)
    assert "--allow-batch-change" in str(info.value)
    other, notes = plan_resume(cfg, CKPT, _state(dp_shard=2), True)
    assert other and cfg.values["gradient_accumulation_steps"] == 4
    assert any("global batch 8 -> 12 (--allow-batch-change)" in n for n in notes)


def test_a_yaml_that_changed_the_batch_is_refused_even_on_the_same_layout(write_config):
    cfg = _cfg(write_config, 2)
    with pytest.raises(UserError) as info:
        plan_resume(cfg, CKPT, _state(gas=2), False)
    assert "changed from 1 / 2 to 1 / 4" in str(info.value)


def test_an_adapter_checkpoint_needs_an_adapter_config(write_config):
    cfg = _cfg(write_config, 1)
    with pytest.raises(UserError) as info:
        plan_resume(cfg, CKPT, _state(adapter={"kind": "lora"}), False)
    assert "LoRA" in str(info.value)


def test_a_stage0_checkpoint_without_parameter_names_stays_on_its_layout(write_config):
    state = {**_state(dp_shard=1), "optimizer_params": None, "run": {"zero_stage": 0, "adapter": None}}
    cfg = _cfg(write_config, 2, "dp_shard_size: 1\ntensor_parallel_size: 2\n")
    with pytest.raises(UserError) as info:
        plan_resume(cfg, CKPT, state, False)
    assert "resumes on its own layout" in str(info.value) and "ds-tp export" in str(info.value)


def test_the_yaml_gas_not_the_changed_one_is_compared():
    """dp 2 -> 4 changed gas 4 -> 2 and the checkpoint of that run records the YAML's 4: dp 8 keeps the batch."""
    from types import SimpleNamespace
    state = {**_state(dp_shard=4, gas=2), "yaml_gas": 4}
    layout = SimpleNamespace(dp=8, dp_replicate=1, dp_shard=8, tp=1, cp=1, product=lambda: "dp_shard(8)")
    cfg = SimpleNamespace(values={"micro_batch_size": 1, "gradient_accumulation_steps": 4}, layout=layout,
                          where=lambda key: None)
    other, notes = plan_resume(cfg, CKPT, state, False)
    assert other and cfg.values["gradient_accumulation_steps"] == 1, notes


def test_layouts_ds_tp_does_not_reshard_are_refused_before_launch():
    from types import SimpleNamespace

    from ds_tp.launch.resume import reshard_problem
    run = SimpleNamespace(zero_stage=0, precision=SimpleNamespace(half_weights=True, name="bf16"),
                          layout=SimpleNamespace(tp=2), model=None)
    assert "ZeRO stage 0" in reshard_problem(run, _state())
    run = SimpleNamespace(zero_stage=3, precision=SimpleNamespace(half_weights=True, name="bf16"),
                          layout=SimpleNamespace(tp=2), model=SimpleNamespace(model_type="phi3"))
    assert reshard_problem(run, _state()) is None  # phi3's fused gate_up is resharded sub-block by sub-block
    assert "stage 1 or 2" in reshard_problem(SimpleNamespace(**{**vars(run), "zero_stage": 2}), _state())


def test_a_fused_weight_is_cut_and_joined_sub_block_by_sub_block():
    """train/reshard.py: a TP rank's piece of phi3/glm4's gate_up is its slice of gate, then of up (uneven TP
    splits included), and joining the ranks' pieces gives the whole weight back."""
    import torch

    from ds_tp.train.reshard import _join, shard_for
    whole = torch.arange(10 * 2, dtype=torch.float32).reshape(10, 2)  # gate rows 0-4, up rows 5-9
    shapes = [(6, 2), (4, 2)]  # an uneven split: 3 + 2 rows of each sub-block
    mine = [shard_for(whole, shapes[r], shapes, r, "w", blocks=2) for r in range(2)]
    assert torch.equal(mine[0], whole[[0, 1, 2, 5, 6, 7]]) and torch.equal(mine[1], whole[[3, 4, 8, 9]])
    assert torch.equal(_join(mine, (10, 2), "w", None, blocks=2), whole)
    assert not torch.equal(shard_for(whole, shapes[0], shapes, 0, "w"), mine[0])  # cut end to end: wrong
