"""Checkpoints resume exactly, and the exported model loads with from_pretrained."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from ds_tp.errors import UserError
from ds_tp.launch.train import prepare_training
from tests.ranks.harness import QUICKSTART, losses, read_metrics, train

# warm-up 2 of 6 steps: the resumed steps 4-6 run on the cosine decay, restored from the checkpoint
FAST = ["--max-steps", "6", "--logging-steps", "1", "--sequence-len", "64", "--warmup-steps", "2"]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "A"
    return out, train(out, [*FAST, "--save-steps", "3"], 2)


def test_resume_logs_the_same_losses(run_a, tmp_path):
    a_out, a_rows = run_a
    assert (a_out / "checkpoint-3" / "ds_tp_state.json").is_file()
    assert (a_out / "latest").read_text() == "checkpoint-3"
    assert not list(a_out.glob("tmp-save-*"))
    b_out = tmp_path / "B"
    b_rows = train(b_out, [*FAST, "--resume-from-checkpoint", str(a_out / "checkpoint-3")], 2)
    assert [r["step"] for r in b_rows] == [4, 5, 6]
    assert losses(b_rows) == losses(a_rows)[3:]  # bitwise on CPU
    assert [r["lr"] for r in b_rows] == [r["lr"] for r in a_rows][3:]
    assert a_rows[2]["lr"] > a_rows[3]["lr"] > a_rows[5]["lr"] > 0  # mid-decay, not a constant rate


def test_resume_keeps_an_eval_driven_schedule(tmp_path):
    """reduce_lr_on_plateau's patience and best eval_loss travel in the checkpoint: a run resumed at step 6
    lowers the rate at the same later steps as the run that never stopped."""
    import yaml

    from tests.ranks.hf_reference import BASE
    config = tmp_path / "plateau.yaml"
    config.write_text(yaml.safe_dump({**BASE, "lr_scheduler": "reduce_lr_on_plateau", "val_set_size": 0.1,
                                      "eval_steps": 2, "lr_scheduler_kwargs": {"patience": 2, "factor": 0.5,
                                                                               "threshold": 0.2}}))
    a_rows = train(tmp_path / "A", ["--save-steps", "6"], 1, config=config)
    b_rows = train(tmp_path / "B", ["--resume-from-checkpoint", str(tmp_path / "A" / "checkpoint-6")], 1, config=config)
    rates = [r["lr"] for r in a_rows if "lr" in r]
    assert [r["lr"] for r in b_rows if "lr" in r] == rates[6:]
    # evaluations at 4 and 6 fell short, the one at 8 exceeds patience 2: halved from step 9 on, which a
    # scheduler that forgot the two bad evaluations before the checkpoint would not do
    assert rates[:8] == [2e-3] * 8 and rates[8:] == [1e-3] * 4


def test_export_loads_with_from_pretrained(run_a):
    a_out, _ = run_a
    model = AutoModelForCausalLM.from_pretrained(a_out)
    assert model.config.num_hidden_layers == 4
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    assert (a_out / "tokenizer.json").is_file() and (a_out / "ds_tp" / "deepspeed_config.json").is_file()
    metrics = read_metrics(a_out)
    assert [r["step"] for r in metrics] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "grad_norm", "tokens_per_s"} <= r.keys() for r in metrics)


def test_resume_that_changes_the_global_batch_is_refused(run_a, tmp_path):
    """fault: resuming on a layout where the checkpoint's global batch (16 = micro 8 x gas 1 x dp 2) cannot be kept
    (dp_shard 3: 16 / (8 x 3) is not whole), or with micro_batch_size changed in the YAML
    does: refused before any rank starts, in one line naming both batches and --allow-batch-change; with the flag
    the run is planned and says the batch changes
    lost: nothing"""
    a_out, _ = run_a
    checkpoint = str(a_out / "checkpoint-3")
    for flags, world, why in ((["--dp-shard-size", "3"], 3, "micro_batch_size 8 x dp 3 does not divide it"),
                              (["--dp-shard-size", "1", "--micro-batch-size", "4"], 1,
                               "micro_batch_size / gradient_accumulation_steps changed from 8 / 1 to 4 / 1")):
        with pytest.raises(UserError) as info:
            prepare_training(QUICKSTART, [*FAST, "--output-dir", str(tmp_path / "C"), *flags,
                                          "--resume-from-checkpoint", checkpoint], world)
        said = str(info.value)
        assert "trained with a global batch of 16 sequences" in said and why in said, said
        assert "--allow-batch-change" in said and len(info.value.problems) == 1
    _, plan, *_ = prepare_training(QUICKSTART, [*FAST, "--output-dir", str(tmp_path / "D"), "--dp-shard-size", "3",
                                                "--resume-from-checkpoint", checkpoint], 3, allow_batch_change=True)
    assert plan.resume_other_layout and plan.global_batch == 24
    assert any("global batch 16 -> 24 (--allow-batch-change)" in n for n in plan.notes), plan.notes


def test_foreign_output_dir_is_not_overwritten(run_a):
    """fault: a new run pointed at the output_dir of another run
    does: refused before any rank starts; --overwrite or --auto-resume-from-checkpoints are named
    lost: nothing"""
    a_out, _ = run_a
    with pytest.raises(UserError) as info:
        prepare_training(QUICKSTART, [*FAST, "--output-dir", str(a_out)], 2)
    said = str(info.value)
    assert "already holds a run" in said and "--overwrite" in said and "--auto-resume-from-checkpoints" in said


def test_export_command_turns_a_checkpoint_into_a_model(run_a, tmp_path):
    """`ds-tp export`: a crashed run's checkpoint still yields a usable HF model (ZeRO-3 partitions merged)."""
    from click.testing import CliRunner

    from ds_tp.cli import main

    a_out, _ = run_a
    result = CliRunner().invoke(main, ["export", str(a_out / "checkpoint-3"), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.config.num_hidden_layers == 4
    # the step-3 weights differ from the final (step-6) export of the same run
    final = AutoModelForCausalLM.from_pretrained(a_out).state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert model.state_dict()[key].shape == final[key].shape
    assert not torch.equal(model.state_dict()[key], final[key])
    bad = CliRunner().invoke(main, ["export", str(tmp_path), str(tmp_path / "x")])
    assert bad.exit_code == 2 and "not a complete ds-tp checkpoint" in bad.output
