"""Checkpoints resume exactly, and the exported model loads with from_pretrained."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from ds_tp.errors import UserError
from ds_tp.launch.train import prepare_training
from tests.ranks.harness import QUICKSTART, losses, read_metrics, train

FAST = ["--max-steps", "6", "--logging-steps", "1", "--sequence-len", "64"]


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


def test_resume_with_another_layout_is_refused(run_a, tmp_path):
    """fault: resuming a checkpoint with another layout (dp_shard 2 -> 1)
    does: refused before any rank starts, naming both layouts and ds-tp export as the way out
    lost: nothing"""
    a_out, _ = run_a
    with pytest.raises(UserError) as info:
        prepare_training(QUICKSTART, [*FAST, "--output-dir", str(tmp_path / "C"), "--dp-shard-size", "1",
                                      "--resume-from-checkpoint", str(a_out / "checkpoint-3")], 1)
    assert "resume on the same layout" in str(info.value)


def test_foreign_output_dir_is_not_overwritten(run_a):
    """fault: a new run pointed at the output_dir of another run
    does: refused before any rank starts; --overwrite or --auto-resume-from-checkpoints are named
    lost: nothing"""
    a_out, _ = run_a
    with pytest.raises(UserError) as info:
        prepare_training(QUICKSTART, [*FAST, "--output-dir", str(a_out)], 2)
    assert "already holds a run" in str(info.value) and "--overwrite" in str(info.value)


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
