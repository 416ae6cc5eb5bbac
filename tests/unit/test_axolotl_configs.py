"""Axolotl-style configs (written here, in the shapes Axolotl's examples use) through `ds-tp validate` and
`translate`: empty keys, every key class, old names, dataset types, Axolotl's deepspeed_configs names.
Each file's first line says what to expect: `# expect: ok` or `# expect: refused KEY [KEY...]` (the keys
the one-line refusals must name, in order)."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from ds_tp.translators.dataset_types import resolve_dataset_type

from ds_tp.cli import main
from tests.conftest import ROOT

CORPUS = sorted((ROOT / "tests" / "fixtures" / "axolotl_style").glob("*.yaml"))


def _expect(path: Path) -> tuple[str, list[str]]:
    words = path.read_text().splitlines()[0].removeprefix("# expect:").split()
    return words[0], words[1:]


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no deepspeed_configs/ here: Axolotl's names resolve to ds-tp's files
    state, keys = _expect(path)
    for command in ("validate", "translate"):
        result = CliRunner().invoke(main, [command, str(path), "--world-size", "2"])
        assert "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        if state == "ok":
            assert result.exit_code == 0, result.output
            if command == "translate":
                json.loads(result.stdout[result.stdout.index("{"):])
        else:
            assert result.exit_code == 2, result.output
            assert len(errors) == 1, errors  # one line for one refused feature
            assert all(f" {k}" in errors[0] or f"{k}:" in errors[0] for k in keys), errors
            assert f"{path}:" in errors[0]


def test_ignored_keys_are_one_notice_with_their_lines():
    result = CliRunner().invoke(main, ["validate", str(ROOT / "tests/fixtures/axolotl_style/ignored-many.yaml")])
    notices = [x for x in result.output.splitlines() if "accepted with no effect" in x]
    assert len(notices) == 1 and "hub_model_id (line 9)" in notices[0] and "gradio_share (line 12)" in notices[0]
    assert "warning:" not in result.output


def test_old_names_are_read_as_the_new_ones(tmp_path):
    from ds_tp.config import load_config
    cfg = load_config(ROOT / "tests/fixtures/axolotl_style/old-names.yaml")
    assert cfg.values["eval_strategy"] == "steps" and "evaluation_strategy" not in cfg.values
    assert cfg.values["revision_of_model"] == "main" and cfg.values["context_parallel_size"] == 1
    assert cfg.values["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.parametrize("name, runs", [
    ("alpaca", "alpaca"), ("completion", "completion"), ("chat_template", "chat_template"),
    ("chat_template.default", "chat_template"),
    ("alpaca:phi", None), ("alpaca:chat", None), ("input_output", None), ("sharegpt", None),
    ("sharegpt:chat", None), ("chatml.intel", None), ("llama3.ultra", None), ("chat_template.argilla", None),
    ("bradley_terry.chat_template", None), ("pretrain", None), ("my_module.my_strategy", None), ("alpacca", None),
])
def test_dataset_types_as_axolotl_names_them(name, runs):
    got, why = resolve_dataset_type(name)
    assert got == runs
    if runs is None:
        assert why and ("supported:" in why or "chat_template" in why)


def test_fetch_deepspeed_configs_never_overwrites(tmp_path):
    folder = tmp_path / "deepspeed_configs"
    first = CliRunner().invoke(main, ["fetch", "deepspeed_configs", str(folder)])
    assert first.exit_code == 0 and "wrote 8" in first.output
    assert json.loads((folder / "zero3_bf16.json").read_text())["zero_optimization"]["stage"] == 3
    (folder / "zero1.json").write_text("{}")
    again = CliRunner().invoke(main, ["fetch", "deepspeed_configs", str(folder)])
    assert "wrote 0" in again.output and (folder / "zero1.json").read_text() == "{}"


def test_every_axolotl_0_21_key_is_known():
    """A sample of keys from each class, so a schema edit that drops a class fails here."""
    from ds_tp.config.schema import load_schema
    props = load_schema()["properties"]
    for key in ("eval_sample_packing", "loss_watchdog_threshold", "hub_model_id", "use_mlflow", "gradio_share",
                "processor_type", "lora_fan_in_fan_out", "dpo_use_weighting", "tiled_mlp", "eot_tokens",
                "expert_parallel_size", "liger_rms_norm_gated", "evaluation_strategy", "model_config"):
        assert key in props, key
