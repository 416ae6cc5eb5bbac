"""Empty means unset at every level, as in Axolotl: a config with `key:` behaves as one without the key."""
import pytest

from ds_tp.config import load_config
from ds_tp.errors import UserError
from tests.conftest import MINIMAL

EMPTY_TOP = "wandb_project:\nspecial_tokens:\nresume_from_checkpoint:\nlora_model_dir:\nwarmup_steps:\nwarmup_ratio: 0.1\n"


def test_empty_top_level_keys_are_absent(write_config):
    plain = load_config(write_config(MINIMAL + "warmup_ratio: 0.1\n", "a.yaml"))
    empty = load_config(write_config(MINIMAL + EMPTY_TOP, "b.yaml"))
    assert empty.values == plain.values  # defaults filled alike; no "null" error, no exclusive-key error


def test_empty_nested_mapping_and_dataset_fields(write_config):
    text = MINIMAL.replace("    type: alpaca\n", "    type: alpaca\n    split:\n    name:\n") + \
        "fsdp_config:\n  reshard_after_forward:\n  offload_params:\n"
    cfg = load_config(write_config(text))
    assert cfg.values["datasets"][0] == {"path": "data.jsonl", "type": "alpaca"}
    assert cfg.values["fsdp_config"] == {}


def test_empty_list_items_are_dropped_and_errors_keep_their_line(write_config):
    text = MINIMAL.replace("datasets:\n", "datasets:\n  -\n  - path: other.jsonl\n    type: no_such_type\n")
    path = write_config(text)
    with pytest.raises(UserError) as caught:
        load_config(path)
    line = text.splitlines().index("    type: no_such_type") + 1
    messages = [str(p) for p in caught.value.problems]
    assert any(f"{path}:{line}:" in m and "datasets[0].type" in m for m in messages), messages  # the null item is gone


def test_an_empty_key_takes_its_default(write_config):
    cfg = load_config(write_config(MINIMAL.replace("learning_rate: 2e-5", "learning_rate:") + "bf16:\n"))
    assert cfg.values["learning_rate"] == 2e-5 and cfg.values["bf16"] == "auto"
    assert any("learning_rate" in p.key and "not set" in p.message for p in cfg.notices)
    with pytest.raises(UserError, match="missing required key 'base_model'"):
        load_config(write_config(MINIMAL.replace("base_model: some/model", "base_model:"), "b.yaml"))
