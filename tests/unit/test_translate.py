"""The translation: golden files for every example, the card's done-when figures, DeepSpeed's parser."""
import json

import pytest

from ds_tp.config import load_config
from ds_tp.device import cpu_facts
from ds_tp.ds_config import build_ds_config
from ds_tp.errors import UserError
from scripts.update_golden import golden_path, translate_example
from tests.conftest import CARD, EXAMPLES, MINIMAL

WORLDS = json.loads((EXAMPLES / "golden" / "worlds.json").read_text())
GPU = {"accelerator": "cuda", "count": 8, "name": "NVIDIA H100 80GB HBM3", "bf16": True, "tf32": True,
       "source": "test"}


def ds(path, world, device=None, overrides=()):
    cfg = load_config(path, overrides, world)
    return build_ds_config(cfg, device or cpu_facts("test"))[0].config


@pytest.mark.parametrize("example", sorted(WORLDS))
def test_golden(example):
    expected = json.loads(golden_path(example).read_text())
    assert translate_example(example, WORLDS[example]) == expected


def test_card_done_when():
    s1b = ds(CARD / "scenario-1b.yaml", 8)
    assert s1b["zero_optimization"]["stage"] == 3 and s1b["tensor_parallel"]["autotp_size"] == 2
    s2 = ds(CARD / "scenario-2.yaml", 16)
    assert (s2["zero_optimization"]["stage"], s2["tensor_parallel"]["autotp_size"],
            s2["zero_optimization"]["zero_hpz_partition_size"]) == (3, 2, 4)
    assert ds(CARD / "scenario-3.yaml", 8)["sequence_parallel_size"] == 2
    tp = ds(CARD / "minimal-tp.yaml", 2)
    assert tp["tensor_parallel"]["autotp_size"] == 2 and tp["zero_optimization"]["stage"] != 3
    r70 = ds(CARD / "recommended-70b.yaml", 8, GPU)
    assert r70["train_micro_batch_size_per_gpu"] == 1 and r70["gradient_accumulation_steps"] == 8
    assert r70["gradient_clipping"] == 1.0 and r70["bf16"] == {"enabled": True}
    assert r70["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "train_batch_size" not in r70


def test_auto_precision_follows_the_device():
    one_gpu = ds(EXAMPLES / "single-gpu-8b.yaml", 1, GPU)
    assert one_gpu["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in one_gpu
    assert ds(EXAMPLES / "single-gpu-8b.yaml", 8, GPU)["bf16"] == {"enabled": True}
    cpu = ds(EXAMPLES / "single-gpu-8b.yaml", 1)
    assert "bf16" not in cpu and "fp16" not in cpu
    old_gpu = dict(GPU, bf16=False, name="Tesla V100")
    assert ds(EXAMPLES / "single-gpu-8b.yaml", 1, old_gpu)["fp16"]["enabled"] is True


def test_fused_adamw_only_on_cuda():
    gpu = ds(CARD / "recommended-70b.yaml", 8, GPU)["optimizer"]["params"]
    cpu = ds(CARD / "recommended-70b.yaml", 8)["optimizer"]["params"]
    assert gpu["fused"] is True and gpu["torch_adam"] is True and "fused" not in cpu


@pytest.mark.parametrize("sched", ["cosine", "linear", "constant", "constant_with_warmup", "rex", "polynomial"])
def test_schedules_drive_the_rate_without_a_deepspeed_block(write_config, sched):
    path = write_config(MINIMAL + f"lr_scheduler: {sched}\nwarmup_steps: 0\nmax_steps: 50\n")
    out, _ = build_ds_config(load_config(path), cpu_facts("test"))
    assert "scheduler" not in out.config
    [row] = [r for r in out.rows if r.target == "(torch scheduler)"]
    warm = "no warm-up" if sched == "constant" else "0 warmup steps"
    assert row.value.startswith(f"{sched} (") and warm in row.value


@pytest.mark.parametrize("sched", ["reduce_lr_on_plateau", "greedy"])
def test_eval_driven_schedules_need_an_eval_split(write_config, sched):
    with pytest.raises(UserError) as info:
        ds(write_config(MINIMAL + f"lr_scheduler: {sched}\n"), None)
    assert f":8:1: lr_scheduler: {sched} lowers the rate when eval_loss stops improving" in str(info.value)
    out, _ = build_ds_config(load_config(write_config(MINIMAL + f"lr_scheduler: {sched}\nval_set_size: 0.1\n",
                                                      "b.yaml")), cpu_facts("test"))
    [row] = [r for r in out.rows if r.target == "(torch scheduler)"]
    assert "stepped with eval_loss" in row.value


def test_sgd_and_unknown_optimizer(write_config):
    out = ds(write_config(MINIMAL + "optimizer: sgd\n"), None)
    assert "optimizer" not in out and out["zero_allow_untested_optimizer"] is True  # transformers builds it
    with pytest.raises(UserError) as info:
        ds(write_config(MINIMAL + "optimizer: galore_adamw\n", "b.yaml"), None)
    assert "optimizer 'galore_adamw' is not implemented by ds-tp" in str(info.value)
    assert str(info.value).startswith(str(tmp := info.value.problems[0].where)) and ":8:1" in tmp


def test_user_deepspeed_merges_and_warns(write_config):
    cfg = load_config(EXAMPLES / "user-deepspeed-override.yaml", (), 4)
    out, warnings = build_ds_config(cfg, cpu_facts("test"))
    assert out.config["zero_optimization"]["overlap_comm"] is True
    assert out.config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # "auto" keeps ours
    path = write_config(MINIMAL + "deepspeed:\n  zero_optimization:\n    stage: 2\n")
    out, warnings = build_ds_config(load_config(path), cpu_facts("test"))
    assert out.config["zero_optimization"]["stage"] == 2
    assert any("overrides the generated zero_optimization.stage (0 -> 2)" in str(w) for w in warnings)


def test_reshard_and_offload_hints(write_config):
    text = MINIMAL + "dp_shard_size: 2\nfsdp_config:\n  reshard_after_forward: false\n  offload_params: true\n"
    zero = ds(write_config(text), 2)["zero_optimization"]
    assert zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_max_reuse_distance"] >= 10**9


def test_deepspeed_parser_accepts_every_example():
    from deepspeed.runtime.config import DeepSpeedConfig
    for example, world in WORLDS.items():
        config = translate_example(example, world)
        parsed = DeepSpeedConfig(dict(config))
        assert parsed.train_micro_batch_size_per_gpu == config["train_micro_batch_size_per_gpu"], example
        assert parsed.zero_optimization_stage == config["zero_optimization"]["stage"], example


def test_optimizers_beyond_adamw_are_built_by_transformers_on_each_rank(write_config):
    from ds_tp.translators.optimizer import client_optimizer
    path = write_config(MINIMAL + "optimizer: paged_adamw_8bit\nadam_beta2: 0.95\nweight_decay: 0.1\n"
                                  "optim_args:\n  momentum: 0.9\n")
    out = ds(path, None)
    assert "optimizer" not in out and out["zero_force_ds_cpu_optimizer"] is False
    values = load_config(path, (), None).values
    assert client_optimizer(values) == {"optim": "paged_adamw_8bit", "learning_rate": 2e-5, "adam_beta1": 0.9,
                                        "adam_beta2": 0.95, "adam_epsilon": 1e-8, "optim_args": "momentum=0.9"}
    assert client_optimizer({**values, "optimizer": "sgd"})["optim"] == "sgd"
    assert client_optimizer({**values, "optimizer": "adamw_torch"}) is None


@pytest.mark.parametrize("name, why", [("adamw_torch_8bit", "adamw_bnb_8bit"), ("lomo", "backward pass"),
                                       ("schedule_free_adamw", "schedulefree"), ("muon", "Axolotl's own")])
def test_optimizers_ds_tp_cannot_run_are_refused_with_the_reason(write_config, name, why):
    with pytest.raises(UserError) as info:
        ds(write_config(MINIMAL + f"optimizer: {name}\n"), None)
    assert ":8:1: optimizer: optimizer" in str(info.value) and why in str(info.value)


def test_optim_args_with_adamw_is_warned_as_without_effect(write_config):
    cfg = load_config(write_config(MINIMAL + "optimizer: adamw_torch\noptim_args: amsgrad=true\n"), (), None)
    _, warnings = build_ds_config(cfg, cpu_facts("test"))
    assert any(w.key == "optim_args" and "no effect" in w.message for w in warnings)
