"""Embedding rows decided as Axolotl decides them; overrides_of_model_config set on the model config."""
import pytest
from ds_tp.translators.model_shape import embedding_rows

from ds_tp.config import load_config
from ds_tp.errors import UserError
from ds_tp.model_config import load_model_config, load_tokenizer, resolve_model_path
from tests.conftest import MINIMAL


def test_embedding_rows():
    assert embedding_rows(113, 112) == 113  # grows to the tokenizer
    assert embedding_rows(113, 112, to_32x=True) == 128
    assert embedding_rows(100, 112) == 112 and embedding_rows(100, 112, shrink=True) == 100  # shrinks only if asked
    assert embedding_rows(100, 112, to_32x=True) == 128  # ceil(100 / 32) * 32 = 128 > 112: grows, as in Axolotl
    assert embedding_rows(96, 112, to_32x=True, shrink=True) == 96


def test_overrides_of_model_config_and_tokens(tmp_path):
    path = resolve_model_path("builtin:tiny-llama", tmp_path)
    config = load_model_config(path, {"overrides_of_model_config": {"rope_theta": 1234.0, "use_cache": False}})
    assert config.rope_theta == 1234.0 and config.use_cache is False
    tok = load_tokenizer(path, {"tokens": ["<tool>"], "special_tokens": {"additional_special_tokens": ["<x>"]}})
    assert tok.convert_tokens_to_ids(["<tool>", "<x>"]) == [len(tok) - 2, len(tok) - 1]  # tokens first


def test_router_aux_loss_is_refused(write_config):
    with pytest.raises(UserError) as info:
        load_config(write_config(MINIMAL + "model_config:\n  output_router_logits: true\n"))
    assert "overrides_of_model_config.output_router_logits: the MoE router's auxiliary loss" in str(info.value)
