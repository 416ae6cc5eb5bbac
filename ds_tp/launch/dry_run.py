"""`ds-tp train --dry-run`: the layout and the expected sharding, without starting any rank."""
from __future__ import annotations

import json

import click

# AutoTP splits these by output rows (column-parallel) and these by input columns (row-parallel).
ROW_SPLIT = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")
COL_SPLIT = ("o_proj", "down_proj")


def expected_shapes(model_cfg: dict, tp: int, dp_shard: int) -> list[str]:
    h, inter = model_cfg["hidden_size"], model_cfg["intermediate_size"]
    heads, kv = model_cfg["num_attention_heads"], model_cfg.get("num_key_value_heads") or model_cfg["num_attention_heads"]
    head_dim = model_cfg.get("head_dim") or h // heads
    shapes = {"layers.0.self_attn.q_proj.weight": [heads * head_dim, h],
              "layers.0.self_attn.k_proj.weight": [kv * head_dim, h],
              "layers.0.self_attn.o_proj.weight": [h, heads * head_dim],
              "layers.0.mlp.down_proj.weight": [h, inter],
              "lm_head.weight": [model_cfg["vocab_size"], h]}
    lines = []
    for name, (rows, cols) in shapes.items():
        local = [rows // tp, cols] if any(k in name for k in ROW_SPLIT) else [rows, cols // tp]
        numel = local[0] * local[1]
        lines.append(f"{name}: global {[rows, cols]} -> tp-local {local} -> ~{-(-numel // dp_shard)} elements "
                     f"per rank under ZeRO-3 (dp_shard {dp_shard})" if dp_shard > 1 else
                     f"{name}: global {[rows, cols]} -> tp-local {local}")
    return lines


def print_dry_run(plan, cfg) -> None:
    layout = cfg.layout
    echo = lambda text: click.echo(text, err=True)  # noqa: E731
    echo(f"layout: {layout.product()}")
    for axis in ("tp", "cp", "dp"):
        echo(f"  {axis} groups: {layout.groups(axis)}")
    echo(f"effective batch: {plan.global_batch} sequences per optimizer step; {plan.total_steps} steps")
    try:
        from transformers import AutoConfig
        model_cfg = AutoConfig.from_pretrained(plan.model_path).to_dict()
        for line in expected_shapes(model_cfg, layout.tp, layout.dp_shard):
            echo(f"  {line}")
    except (OSError, KeyError, ValueError) as exc:
        echo(f"  (no sharding report: {exc})")
    echo("deepspeed config: " + json.dumps(plan.ds_config, sort_keys=True))
