"""Axolotl's long-context keys (chunked_cross_entropy, tiled_mlp*, gradient_checkpointing: offload,
activation_offloading) resolve to one decision, ResolvedRun.long_context, and validate says what each does."""
import pytest
from ds_tp.translators.layout import Layout
from ds_tp.translators.long_context import LongContext, resolve_long_context
from ds_tp.translators.resolved import resolve_run

from ds_tp.config import load_config
from ds_tp.errors import UserError
from tests.conftest import MINIMAL


def _said(cfg) -> str:
    return "\n".join(str(x) for x in [*cfg.warnings, *cfg.notices])


@pytest.mark.parametrize("world, want", [(1, "fused"), (8, "tiled")])
def test_the_chunked_loss_applies_on_every_layout(write_config, world, want):
    """dp_shard inferred from the world size (ZeRO-3) takes the tiled path; nothing is warned either way."""
    cfg = load_config(write_config(MINIMAL + "chunked_cross_entropy: true\n"), (), world)
    assert "chunked_cross_entropy" not in _said(cfg)
    run = resolve_run(cfg.values, cfg.layout, {"accelerator": "cpu"})
    assert run.long_context.loss == want


def test_tp_takes_the_tiled_loss():
    got, _ = resolve_long_context({"chunked_cross_entropy": True}, False, 2, 1, 64)
    assert got.loss == "tiled" and got.loss_chunks == 8
    assert resolve_long_context({"chunked_cross_entropy": True, "rl": "dpo"}, False, 1, 1, 64)[0].loss == "standard"


@pytest.mark.parametrize("keys, checkpointing", [
    ({"gradient_checkpointing": True}, "on"),
    ({"gradient_checkpointing": "offload"}, "offload"),
    ({"gradient_checkpointing": "offload_disk"}, "offload"),
    ({"gradient_checkpointing": True, "activation_offloading": True}, "offload"),
    ({"gradient_checkpointing": True, "activation_offloading": "hidden_states"}, "offload"),
    ({}, "off"),
])
def test_checkpointing_and_offload(keys, checkpointing):
    assert resolve_long_context(keys, False, 1, 1, 64)[0].checkpointing == checkpointing


def test_tiled_mlp_count_follows_axolotls_rule_per_ulysses_shard():
    got, found = resolve_long_context({"tiled_mlp": True, "sequence_len": 16384}, True, 2, 2, 2048)
    assert got.mlp_tiles == 4  # ceil(16384 / 2 / 2048)
    assert "4 sequence tile(s) per MLP" in found[0].message
    assert resolve_long_context({"tiled_mlp": True, "tiled_mlp_num_shards": 7}, True, 1, 1, 64)[0].mlp_tiles == 7
    assert resolve_long_context({"tiled_mlp_num_shards": 7}, True, 1, 1, 64)[0].mlp_tiles == 0


def test_validate_says_what_each_key_does(write_config):
    cfg = load_config(write_config(MINIMAL + "gradient_checkpointing: offload_disk\ntiled_mlp_num_shards: 4\n"
                                   "tiled_mlp_use_original_mlp: false\n"), (), 1)
    said = _said(cfg)
    assert "offloads activations to host memory, not to disk" in said
    assert "tiled_mlp_num_shards: no effect without tiled_mlp: true" in said
    cfg = load_config(write_config(MINIMAL + "tiled_mlp: true\ntiled_mlp_use_original_mlp: false\n"), (), 1)
    assert "always tiles the model's own MLP" in _said(cfg)


def test_offloading_without_checkpointing_is_refused_at_its_line(write_config):
    with pytest.raises(UserError) as err:
        load_config(write_config(MINIMAL + "activation_offloading: true\n"), (), 1)
    assert "activation_offloading" in str(err.value) and "needs gradient_checkpointing" in str(err.value)


def test_the_decision_survives_the_plan_file():
    run = resolve_run({"tiled_mlp": True, "tiled_mlp_num_shards": 3, "gradient_checkpointing": "offload"},
                      Layout(1, 1, 1, 1), {"accelerator": "cpu"})
    assert type(run).from_dict(run.to_dict()).long_context == LongContext("standard", 8, 3, "offload", False)


def test_tied_embeddings_keep_the_standard_loss_where_it_would_be_tiled():
    got, found = resolve_long_context({"chunked_cross_entropy": True}, True, 1, 1, 64, tied=True)
    assert got.loss == "standard" and "tied embeddings" in found[0].message
    assert resolve_long_context({"chunked_cross_entropy": True}, False, 1, 1, 64, tied=True)[0].loss == "fused"
