"""The quickstart assets: deterministic rows, tokenizer and tiny Llama; the builtin model cache."""
from __future__ import annotations

import time

import pytest

from ds_tp.assets import (
    CHAT_TEMPLATE,
    build_tiny_llama,
    build_tokenizer,
    generate_quickstart_rows,
    greedy_accuracy,
    resolve_builtin_model,
)
from ds_tp.data import alpaca_prompt
from ds_tp.errors import UserError


def test_rows_are_deterministic_alpaca_rows():
    rows = generate_quickstart_rows(200, 5)
    assert rows == generate_quickstart_rows(200, 5) and rows != generate_quickstart_rows(200, 6)
    assert all(set(row) == {"instruction", "input", "output"} for row in rows)
    assert all(isinstance(v, str) and 0 < len(row["output"]) <= 5 for row in rows for v in row.values())
    assert len({row["instruction"] for row in rows}) == 5


def test_tokenizer_round_trips_and_adds_bos_only():
    tok = build_tokenizer(generate_quickstart_rows(20, 0))
    prompt = alpaca_prompt("Uppercase it.", "abc") + "ABC"
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.eos_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == prompt
    assert len(ids) < 30  # template pieces are single tokens
    assert {tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token} == {"<pad>", "<unk>", "<s>", "</s>"}
    assert tok.chat_template == CHAT_TEMPLATE


def test_tiny_llama_build_is_deterministic_and_loadable(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = build_tiny_llama(tmp_path / "a", seed=0)
    start = time.perf_counter()  # timed once torch/transformers are imported
    second = build_tiny_llama(tmp_path / "b", seed=0)
    assert time.perf_counter() - start < 5
    weights = (first / "model.safetensors").read_bytes()
    assert weights == (second / "model.safetensors").read_bytes()
    assert weights != (build_tiny_llama(tmp_path / "c", seed=1) / "model.safetensors").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(first)
    tok = AutoTokenizer.from_pretrained(first)
    config = model.config
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (64, 4, 2)
    assert config.vocab_size % 8 == 0 and config.vocab_size >= len(tok) and not config.tie_word_embeddings
    assert tok("a")["input_ids"][0] == tok.bos_token_id == config.bos_token_id
    rows = generate_quickstart_rows(4, 0)
    assert 0.0 <= greedy_accuracy(model, tok, rows, max_new_tokens=3) <= 1.0


def test_resolve_builtin_model_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DS_TP_HOME", str(tmp_path))
    path = resolve_builtin_model("builtin:tiny-llama")
    assert path == tmp_path / "assets" / "tiny-llama-v1" and (path / "config.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_builtin_model("tiny-llama") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == ["tiny-llama-v1"]  # no temporary folder left


def test_unknown_builtin_lists_known():
    with pytest.raises(UserError) as caught:
        resolve_builtin_model("builtin:huge-llama")
    assert str(caught.value).startswith("base_model: unknown builtin model 'builtin:huge-llama' "
                                        "(known: builtin:tiny-llama, builtin:tiny-mistral, ")
    assert "builtin:tiny-qwen3-moe" in str(caught.value)
