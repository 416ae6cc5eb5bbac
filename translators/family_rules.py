"""How each model family splits under tensor parallelism, in one table. Pure (a ModelShape in).

DeepSpeed's AutoTP follows the model's HuggingFace tp_plan. Where that plan uses a style DeepSpeed 0.19.8
does not implement (`rowwise_split_input`: a row-parallel layer fed a gathered input, which HF uses
after fused or normalised projections), ds-tp gives AutoTP its own layer specs instead
(`tensor_parallel.partition_config`): fused projections are split sub-block by sub-block (SubParamLinear,
so every rank keeps matching slices of q, k and v, or of gate and up), and layers whose output a
norm reads as a whole stay whole. Families whose layers AutoTP cannot split consistently are refused
with the reason. Routed MoE experts stay whole on every TP rank (their input is the whole hidden
state after the attention's all-reduce, so each rank computes the same expert output and gradient).

Every layout also sets `vocab_parallel_lm_head: false`: DeepSpeed would otherwise split a tied
output head by vocabulary, and ds-tp's loss reads the whole vocabulary's logits.
"""

from __future__ import annotations

import re

from .model_shape import ModelShape

COLUMN, ROW, SKIP = "column", "row", "skip"


def _spec(pattern: str, kind: str, shape: list | None = None) -> dict:
    out: dict = {"patterns": [pattern], "partition_type": kind}
    if shape is not None:
        out["shape"], out["partition_dim"] = shape, 0
    return out


def _attention(q: str = COLUMN, o: str = ROW) -> list[dict]:
    return [_spec(r".*\.self_attn\.[qkv]_proj\.weight$", q), _spec(r".*\.self_attn\.o_proj\.weight$", o)]


FUSED_GATE_UP = r".*\.mlp\.gate_up_proj\.weight$"  # gate and up, one after the other: two equal sub-blocks


def _mlp_fused(shape: ModelShape) -> list[dict]:
    return [
        _spec(FUSED_GATE_UP, COLUMN, [[shape.intermediate, shape.intermediate], -1]),
        _spec(r".*\.mlp\.down_proj\.weight$", ROW),
    ]


def _phi3(shape: ModelShape) -> list[dict]:
    # the attention slices q, k and v out of the fused qkv_proj by the config's (whole-model) sizes, so a
    # split qkv would be cut wrong: the attention stays whole; the fused gate_up is chunked on the rank
    return [_spec(r".*\.self_attn\.(qkv|o)_proj\.weight$", SKIP), *_mlp_fused(shape)]


def _glm4(shape: ModelShape) -> list[dict]:
    return [*_attention(), *_mlp_fused(shape)]


def _olmo2(shape: ModelShape) -> list[dict]:
    # q_norm / k_norm normalise the whole q and k projections (every head together): q, k, v and o stay
    # whole; the MLP is split.
    return [
        *_attention(SKIP, SKIP),
        _spec(r".*\.mlp\.(gate|up)_proj\.weight$", COLUMN),
        _spec(r".*\.mlp\.down_proj\.weight$", ROW),
    ]


# model_type -> ds-tp's layer specs for AutoTP (families whose HF tp_plan DeepSpeed cannot apply)
SPECS = {"phi3": _phi3, "glm4": _glm4, "glm": _glm4, "olmo2": _olmo2, "olmo3": _olmo2}
# model_type -> why tensor parallelism is refused
NO_TP = {
    "gpt_oss": "its attention sinks are one parameter per head, which AutoTP cannot split with the heads",
    "deepseek_v2": "multi-head latent attention's compressed projections are not split by AutoTP's plans here",
    "deepseek_v3": "multi-head latent attention's compressed projections are not split by AutoTP's plans here",
    "falcon_h1": "its Mamba mixer layers have no tensor-parallel plan",
    "lfm2": "its convolution layers have no tensor-parallel plan",
}


def tp_problem(shape: ModelShape | None) -> str | None:
    """Why this model's family cannot run tensor parallel, or None."""
    if shape is None or shape.model_type not in NO_TP:
        return None
    return f"{shape.model_type} models cannot be split by tensor parallelism: {NO_TP[shape.model_type]}"


def partition_config(shape: ModelShape | None) -> dict | None:
    """ds-tp's AutoTP layer specs for this family, or None to let AutoTP follow the model's own tp_plan."""
    if shape is None or shape.model_type not in SPECS:
        return None
    return {"use_default_specs": False, "layer_specs": SPECS[shape.model_type](shape)}


FUSED_MLP = ("phi3", "glm4", "glm")  # the families whose specs split gate_up_proj sub-block by sub-block


def tp_sub_blocks(model_type: str, name: str) -> int:
    """How many equal sub-blocks AutoTP splits one at a time in this weight under ds-tp's specs: each TP rank
    holds its slice of every sub-block, in order (gate then up), so the ranks' shards are joined sub-block by
    sub-block, not end to end. 1 for a weight split as a whole (or not at all)."""
    fused = re.fullmatch(FUSED_GATE_UP, name) or re.fullmatch(r".*\.mlp\.gate_up_proj\.lora_B\.[^.]+\.weight", name)
    return 2 if model_type in FUSED_MLP and fused else 1  # a LoRA lora_B is split as its base layer is
