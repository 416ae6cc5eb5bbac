"""Tiny, randomly initialised models of the families Axolotl users train, built locally from each
family's transformers config (no download): `base_model: builtin:tiny-<family>`. Two layers, hidden 64,
4 heads of 16 (2 kv heads), the quickstart's tokenizer; MoE families get 4 experts, 2 per token.
They exist to check that ds-tp trains every family on every layout (tests/ranks/test_families.py,
docs/families.md); their weights mean nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512)
MOE = dict(num_experts_per_tok=2)
# builtin name -> (transformers model_type, config values beyond COMMON)
TINY_FAMILIES = {
    "mistral": ("mistral", {"sliding_window": None}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "qwen2-moe": ("qwen2_moe", {**MOE, "num_experts": 4, "moe_intermediate_size": 64,
                                "shared_expert_intermediate_size": 64}),
    "qwen3-moe": ("qwen3_moe", {**MOE, "head_dim": 16, "num_experts": 4, "moe_intermediate_size": 64}),
    "mixtral": ("mixtral", {**MOE, "num_local_experts": 4}),
    "gemma": ("gemma", {"head_dim": 16}),
    "gemma2": ("gemma2", {"head_dim": 16, "sliding_window": 64}),
    "gemma3": ("gemma3_text", {"head_dim": 16, "sliding_window": 64}),
    "phi": ("phi", {}),
    "phi3": ("phi3", {}),
    "glm4": ("glm4", {"head_dim": 16}),
    "olmo": ("olmo", {}),
    "olmo2": ("olmo2", {}),
    "granite": ("granite", {}),
    "smollm3": ("smollm3", {}),
    "starcoder2": ("starcoder2", {}),
    "cohere": ("cohere", {}),
    "gpt-oss": ("gpt_oss", {**MOE, "head_dim": 16, "num_local_experts": 4, "sliding_window": 64}),
}
VERSION = "v1"  # bump when a family's bytes change


def folder_name(family: str) -> str:
    return f"tiny-{family}-{VERSION}"


def build_tiny_family(family: str, out_dir: Path, *, seed: int = 0) -> Path:
    """Tokenizer + config + safetensors of a seeded tiny model of `family`; the same seed, the same bytes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ds_tp.assets import QUICKSTART_SEED, build_tokenizer, generate_quickstart_rows

    model_type, extra = TINY_FAMILIES[family]
    tokenizer = build_tokenizer(generate_quickstart_rows(2000, QUICKSTART_SEED))
    config = AutoConfig.for_model(model_type, **{**COMMON, **extra}, vocab_size=-(-len(tokenizer) // 8) * 8,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "ds_tp_asset.json").write_text(json.dumps({"builder": "ds_tp.families.build_tiny_family",
                                                          "family": family, "seed": seed}) + "\n")
    return out_dir
