"""Each run decision is made in one function and read by translate, plan and train alike."""
import json

import pytest
from click.testing import CliRunner
from ds_tp.translators.layout import Layout, resolve_world
from ds_tp.translators.memory import estimate_memory
from ds_tp.translators.model_shape import ModelShape
from ds_tp.translators.resolved import resolve_run

from ds_tp import device as device_mod
from ds_tp.cli import main
from ds_tp.errors import UserError
from ds_tp.launch.train import prepare_training
from tests.conftest import EXAMPLES

GPU8 = {"accelerator": "cuda", "count": 8, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 80.0, "bf16": True,
        "tf32": True, "source": "test"}
# The quickstart with no layout keys at all: the world comes from the machine.
NO_LAYOUT = (EXAMPLES / "quickstart.yaml").read_text().replace("dp_shard_size: 2\n", "").replace("bf16: false", "bf16: auto")


def test_one_world_rule():
    assert resolve_world({}, None, 8) == 8  # every GPU, dp_shard inferred
    assert resolve_world({}, None, 0) == 1  # CPU: one rank
    assert resolve_world({"tensor_parallel_size": 2}, None, 0) == 2  # the rest of the layout
    assert resolve_world({"tensor_parallel_size": 2}, None, 8) == 8
    assert resolve_world({"tensor_parallel_size": 3}, None, 8) == 3  # 8 GPUs do not fit tp 3
    assert resolve_world({"dp_shard_size": 2, "tensor_parallel_size": 2}, None, 8) == 4  # the product
    assert resolve_world({"dp_shard_size": 2}, 6, 8) == 6  # asked for: checked against the layout later


def _train_side(path, tmp_path, device, *args):
    overrides = ["--output-dir", str(tmp_path / "out"), "--dataset-prepared-path", str(tmp_path / "prep"), *args]
    _, prepared, _, world, _ = prepare_training(path, overrides, None, device=device)
    return prepared, world


def test_translate_runs_the_json_train_would_on_the_same_machine(tmp_path, monkeypatch):
    """Failed before: translate used the layout's product (ZeRO 0, autocast), train the GPU count (ZeRO-3, bf16)."""
    path = tmp_path / "c.yaml"
    path.write_text(NO_LAYOUT)
    monkeypatch.setattr(device_mod, "probe_without_torch", lambda: dict(GPU8))
    result = CliRunner().invoke(main, ["translate", str(path)])
    assert result.exit_code == 0, result.output
    translated = json.loads(result.output[result.output.index("{"):])
    prepared, world = _train_side(path, tmp_path, dict(GPU8))
    trained = prepared.ds_config
    assert world == 8 and prepared.resolved.world == 8
    assert translated["zero_optimization"]["stage"] == trained["zero_optimization"]["stage"] == 3
    assert translated["bf16"] == trained["bf16"] == {"enabled": True}
    # train adds only what it learns from the model and the data
    train_only = {"stage3_param_persistence_threshold", "stage3_prefetch_bucket_size", "reduce_bucket_size"}
    assert {k: v for k, v in trained["zero_optimization"].items() if k not in train_only} \
        == translated["zero_optimization"]
    assert {k: v for k, v in trained.items() if k != "zero_optimization"} \
        == {k: v for k, v in translated.items() if k != "zero_optimization"}


def test_decisions_agree_across_translate_plan_and_dry_run(tmp_path):
    path = EXAMPLES / "quickstart.yaml"
    prepared, _ = _train_side(path, tmp_path, device_mod.cpu_facts("test"))
    run = prepared.resolved
    assert (run.zero_stage, run.precision.name, run.world) == (3, "fp32", 2)
    assert prepared.ds_config["zero_optimization"]["stage"] == run.zero_stage
    # plan's estimate reads the same decisions for the same config and layout
    est = estimate_memory(run.model, prepared.config, run.layout, device=device_mod.cpu_facts("test"))
    assert est.precision == run.precision.name
    # one shape resolver: the run's model is the builtin's config.json read by ModelShape
    cfg = json.loads((__import__("pathlib").Path(prepared.model_path) / "config.json").read_text())
    assert run.model == ModelShape.from_config(cfg)
    result = CliRunner().invoke(main, ["train", str(path), "--dry-run", "--output-dir", str(tmp_path / "dry"),
                                       "--dataset-prepared-path", str(tmp_path / "prep")])
    assert result.exit_code == 0, result.output
    assert "ZeRO stage 3" in result.output and "precision fp32" in result.output
    assert f"{run.model.params / 1e6:.1f}M parameters" in result.output


def test_one_gpu_bf16_is_autocast_everywhere():
    shape = ModelShape.from_config({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                    "num_attention_heads": 4, "vocab_size": 100})
    run = resolve_run({"bf16": "auto"}, Layout(1, 1, 1, 1), GPU8)
    assert run.precision.name == "bf16-autocast" and not run.precision.half_weights
    est = estimate_memory(shape, {"bf16": "auto"}, Layout(1, 1, 1, 1), device=GPU8)
    assert est.parameters == 4 * shape.params  # fp32 weights under autocast (failed before: 2 bytes)


def test_train_keeps_plugin_modules_without_num_processes(tmp_path):
    """Failed before: the world-size probe reloaded the config without --plugin-module."""
    probe = "tests.fixtures.plugin_probe.ProbePlugin"
    path = tmp_path / "c.yaml"
    path.write_text((EXAMPLES / "quickstart.yaml").read_text() + f"plugins:\n  - {probe}\n")
    overrides = ["--output-dir", str(tmp_path / "out"), "--dataset-prepared-path", str(tmp_path / "prep")]
    cfg, prepared, *_ = prepare_training(path, overrides, None, plugin_modules=(probe,),
                                         device=device_mod.cpu_facts("test"))
    assert prepared.plugin_modules == [probe]


def test_hostfile_slots_and_num_processes_must_agree(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=2\nb slots=2\n")
    with pytest.raises(UserError, match="--num-processes 2 differs from the 4 slots"):
        prepare_training(EXAMPLES / "quickstart.yaml", [], 2, hostfile=hostfile, device=device_mod.cpu_facts("t"))


def test_target_device_decides_auto_values(tmp_path):
    """The ranks' device, not the launching (GPU-less) host's, decides bf16: auto and fused AdamW."""
    args = ["translate", str(EXAMPLES / "single-gpu-8b.yaml"), "--world-size", "2"]
    result = CliRunner().invoke(main, [*args, "--target-device", "cuda"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["bf16"] == {"enabled": True} and out["optimizer"]["params"].get("fused") is True
    cpu = CliRunner().invoke(main, args)
    on_cpu = json.loads(cpu.output[cpu.output.index("{"):])
    assert "bf16" not in on_cpu and "fused" not in on_cpu["optimizer"]["params"]


def test_hostfile_with_another_runner_says_whose_device_decides(tmp_path):
    from ds_tp.launch.hostfile import parse_hostfile
    from ds_tp.launch.train import target_device
    hostfile = tmp_path / "hosts"
    hostfile.write_text("gpu1 slots=8\n")
    said = []
    got = target_device(None, parse_hostfile(hostfile), hostfile, "slurm", {}, said.append)
    assert got["count"] == 8 and said and "--target-device" in said[0]
    assert target_device("cuda-fp16", parse_hostfile(hostfile))["bf16"] is False


def test_private_attributes_relied_on_exist():
    from ds_tp.train import internals
    assert internals.missing_attributes() == []
    internals.RELIED_ON.append(("deepspeed.utils.groups", "_NO_SUCH_GROUP"))
    try:  # the check can fail
        assert internals.missing_attributes() == ["deepspeed.utils.groups._NO_SUCH_GROUP"]
    finally:
        internals.RELIED_ON.pop()
