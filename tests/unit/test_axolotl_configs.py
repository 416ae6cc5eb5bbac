"""Axolotl-style configs (written here, in the shapes Axolotl's examples use) through `ds-tp validate` and
`translate`: empty keys, every key class, old names, dataset types, Axolotl's deepspeed_configs names.
Each file's first line says what to expect: `# expect: ok` or `# expect: refused KEY [KEY...]` (the keys
the one-line refusals must name, in order)."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from ds_tp.translators.dataset_types import PREFERENCE_GROUP, resolve_dataset_type
from ds_tp.translators.preference import METHODS, resolve_preference

from ds_tp.cli import main
from ds_tp.config import load_config
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


@pytest.mark.parametrize("name, method, beta, reference, extra", [
    ("dpo-chat-template-lora", "dpo", 0.1, "adapter-disabled", {"loss_types": ("sigmoid",)}),
    ("ipo-chatml", "ipo", 0.1, "frozen-copy", {"loss_types": ("ipo",), "label_smoothing": 0.0}),
    ("orpo-argilla-qlora", "orpo", 0.2, "none", {}),  # orpo_alpha is ORPO's beta
    ("kto-llama3-qlora", "kto", 0.5, "adapter-disabled", {"desirable_weight": 0.2, "undesirable_weight": 1.0}),
    ("simpo-chat-template", "simpo", 2.0, "none", {"simpo_gamma": 1.0, "cpo_alpha": 0.0}),
    ("dpo-unread-keys", "dpo", 0.2, "frozen-copy", {}),  # orpo_alpha is every method's beta in Axolotl
    ("dpo-weighting", "dpo", 0.1, "frozen-copy", {"use_weighting": True, "ld_alpha": 0.5}),
])
def test_rl_examples_decide_as_axolotl(name, method, beta, reference, extra):
    """The preference decision of the rl fixtures (Axolotl's rl examples and RLHF docs): the loss, beta (trl.beta,
    else rl_beta, else orpo_alpha, as Axolotl's builder orders them), the reference and each method's weights."""
    cfg = load_config(ROOT / "tests/fixtures/axolotl_style" / f"{name}.yaml", world_size=2)
    preference, findings = resolve_preference(cfg.values)
    assert not [f for f in findings if f.level == "error"]
    assert (preference.method, preference.beta, preference.reference) == (method, beta, reference)
    for field, value in extra.items():
        assert getattr(preference, field) == value, field


def test_rl_keys_a_method_never_reads_are_accepted_as_in_axolotl():
    """A vllm block, a supervised chat_template option in an rl dataset, orpo_alpha under dpo, dpo_* keys under
    another method: accepted (no effect, or a warning that says what Axolotl does), never refused as rl."""
    cfg = load_config(ROOT / "tests/fixtures/axolotl_style/dpo-unread-keys.yaml", world_size=2)
    ignored = " ".join(n.message for n in cfg.notices if "accepted with no effect" in n.message)
    assert "vllm (line" in ignored and "datasets[0].field_thinking (line" in ignored
    assert [w.key for w in cfg.warnings] == ["orpo_alpha"]
    cfg = load_config(ROOT / "tests/fixtures/axolotl_style/ipo-chatml.yaml", world_size=2)
    assert [w.key for w in cfg.warnings] == ["dpo_label_smoothing"]


def test_every_rl_method_has_its_dataset_types():
    """rules.dataset_types skips an rl: without a type group (grpo...: refused at rl:), so each method ds-tp
    trains must have one, or its datasets would go unchecked until preparation."""
    assert set(PREFERENCE_GROUP) == set(METHODS)
