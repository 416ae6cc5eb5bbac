"""Every schema key is a flag, dashes for underscores; values coerced to the schema's type."""
import pytest

from ds_tp.config import load_config
from ds_tp.config.overrides import parse_overrides
from ds_tp.errors import UserError
from tests.conftest import MINIMAL


def test_axolotl_style_flags_are_coerced():
    got = {p: v for p, v, _ in parse_overrides([
        "--max-steps", "2", "--tensor-parallel-size=2", "--output-dir", "D", "--learning-rate", "0.5",
        "--lr-scheduler", "constant", "--special-tokens.pad-token", "<pad>", "--no-bf16", "--sample-packing"])}
    assert got == {("max_steps",): 2, ("tensor_parallel_size",): 2, ("output_dir",): "D", ("learning_rate",): 0.5,
                   ("lr_scheduler",): "constant", ("special_tokens", "pad_token"): "<pad>", ("bf16",): False,
                   ("sample_packing",): True}


def test_override_wins_and_errors_point_at_the_flag(write_config):
    path = write_config(MINIMAL)
    cfg = load_config(path, ["--micro-batch-size", "3"])
    assert cfg.values["micro_batch_size"] == 3
    with pytest.raises(UserError) as info:
        load_config(path, ["--max-steps", "zero"])
    assert str(info.value).startswith("command line --max-steps: max_steps: expected an integer")


def test_unknown_flag_suggests():
    with pytest.raises(UserError) as info:
        parse_overrides(["--max-step", "2"])
    assert "unknown option --max-step" in str(info.value) and "--max-steps" in str(info.value)


def test_bool_flag_with_explicit_value():
    got = parse_overrides(["--bf16", "false", "--tf32", "auto"])
    assert [(p, v) for p, v, _ in got] == [(("bf16",), False), (("tf32",), "auto")]
