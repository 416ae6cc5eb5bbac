"""Non-finite steps are skipped and counted, never applied; too many in a row stop the run.

Stage 0 with a plain torch optimizer goes through ds-tp's StepGuard; ZeRO-3 through DeepSpeed's own
overflow check. DS_TP_FAULT_NONFINITE_STEPS makes rank 0's loss NaN on the named steps."""
import math

import pytest
import torch

from ds_tp.export_checkpoint import export_checkpoint
from tests.ranks.harness import SHARP, read_metrics, train


def _weights(checkpoint, out):
    export_checkpoint(checkpoint, out)
    from safetensors.torch import load_file
    return load_file(out / "model.safetensors")


def _moments(checkpoint) -> list:
    """Every exp_avg / exp_avg_sq tensor the checkpoint's files hold (the optimizer's state, however DeepSpeed nests it)."""
    found: list = []

    def walk(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, key)
        elif isinstance(node, torch.Tensor) and key in ("exp_avg", "exp_avg_sq"):
            found.append(node.float().clone())
    for f in sorted(checkpoint.glob("*.pt")):
        if not f.name.startswith("rng_state"):
            walk(torch.load(f, map_location="cpu", weights_only=False))
    return found


ADAMW = ["--optimizer", "adamw_torch", "--learning-rate", "1e-2", "--weight-decay", "0.1"]
TWO_REPLICAS = ["--dp-replicate-size", "2", "--dp-shard-size", "1"]


@pytest.mark.parametrize("world, overrides", [
    (1, ["--dp-shard-size", "1"]),
    (2, TWO_REPLICAS),
    (1, ["--dp-shard-size", "1", "--bf16", "true"]),
    (2, [*TWO_REPLICAS, "--bf16", "true"]),
    (2, [*TWO_REPLICAS, "--deepspeed", "deepspeed_configs/zero1.json"]),
    (2, [*TWO_REPLICAS, "--deepspeed", "deepspeed_configs/zero2.json"]),
    (2, ["--dp-shard-size", "2"]),
], ids=["stage0_guard", "stage0_guard_2ranks", "bf16_autocast_guard", "bf16_block_2ranks", "zero1", "zero2", "zero3"])
def test_a_nan_step_is_skipped_and_counted(tmp_path, monkeypatch, world, overrides):
    """fault: a NaN loss on one rank at step 3 (injected), AdamW, on ZeRO 0 (1 and 2 ranks), 1, 2, 3 and in bf16
    does: every rank skips that optimizer step (weights and AdamW's moments after step 3 equal those after step 2), counts it in skipped_steps, and trains on
    lost: that one step's update"""
    monkeypatch.setenv("DS_TP_FAULT_NONFINITE_STEPS", "3")
    out = tmp_path / "run"
    rows = train(out, [*SHARP, *ADAMW, "--max-steps", "4", "--save-steps", "1", *overrides], world)
    losses = [r["loss"] for r in rows]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert math.isnan(losses[2]) and all(math.isfinite(x) for i, x in enumerate(losses) if i != 2)
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1]
    m2, m3 = _moments(out / "checkpoint-2"), _moments(out / "checkpoint-3")
    assert m2 and len(m2) == len(m3) and all(torch.equal(a, b) for a, b in zip(m2, m3))  # AdamW state untouched
    two, three = (_weights(out / f"checkpoint-{s}", tmp_path / f"hf{s}") for s in (2, 3))
    assert all(torch.equal(two[k], three[k]) for k in two)  # step 3 was not applied
    final = _weights_of(out)
    assert any(not torch.equal(three[k], final[k]) for k in three)  # step 4 was
    assert all(torch.isfinite(v).all() for v in final.values())


def _weights_of(out):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).state_dict()


def test_nan_steps_in_a_row_stop_the_run(tmp_path, monkeypatch):
    """fault: a NaN loss on steps 2 and 3 in a row with max_nonfinite_steps 2
    does: both steps are skipped, then training stops with a message naming the limit; checkpoint-1 holds finite weights
    lost: the steps after the last checkpoint"""
    monkeypatch.setenv("DS_TP_FAULT_NONFINITE_STEPS", "2,3")
    out = tmp_path / "run"
    with pytest.raises(RuntimeError) as info:
        train(out, [*SHARP, "--max-steps", "6", "--save-steps", "1", "--max-nonfinite-steps", "2",
                    "--dp-shard-size", "1"], 1)
    assert "NonFiniteTraining" in str(info.value) and "2 optimizer steps in a row skipped" in str(info.value)
    assert "max_nonfinite_steps 2" in str(info.value)
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    one = _weights(out / "checkpoint-1", tmp_path / "hf1")
    assert all(torch.isfinite(v).all() for v in one.values())


def test_a_diverging_learning_rate_stops_the_run(tmp_path):
    """fault: a learning rate (1e30, no clipping) that makes the fp32 weights non-finite after one step
    does: every later step has a non-finite loss and is skipped (counted in skipped_steps); after max_nonfinite_steps (3) in a row training stops with a message naming the limit
    lost: the steps after the last checkpoint"""
    with pytest.raises(RuntimeError) as info:
        train(tmp_path / "nan", ["--max-steps", "8", "--logging-steps", "1", "--sequence-len", "64", "--optimizer",
                                 "sgd", "--learning-rate", "1e30", "--max-grad-norm", "0", "--lr-scheduler",
                                 "constant", "--dp-shard-size", "1", "--max-nonfinite-steps", "3"], 1)
    assert "3 optimizer steps in a row skipped" in str(info.value) and "max_nonfinite_steps 3" in str(info.value)
    rows = read_metrics(tmp_path / "nan")
    assert math.isfinite(rows[0]["loss"]) and all(not math.isfinite(r["loss"]) for r in rows[1:]), rows
    assert [r["skipped_steps"] for r in rows] == list(range(len(rows))) and len(rows) == 4
