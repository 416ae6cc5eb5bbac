"""`ds-tp train --dry-run`: the resolved run and the expected sharding, without starting any rank."""
from __future__ import annotations

import json

import click

from ds_tp.explain import decision_lines
from ds_tp.translators.model_shape import ModelShape

# AutoTP splits these by output rows (column-parallel) and these by input columns (row-parallel).
ROW_SPLIT = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")
COL_SPLIT = ("o_proj", "down_proj")


def expected_shapes(shape: ModelShape, tp: int, dp_shard: int) -> list[str]:
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    shapes = {"layers.0.self_attn.q_proj.weight": [q, shape.hidden],
              "layers.0.self_attn.k_proj.weight": [kv, shape.hidden],
              "layers.0.self_attn.o_proj.weight": [shape.hidden, q],
              "layers.0.mlp.down_proj.weight": [shape.hidden, shape.intermediate],
              "lm_head.weight": [shape.vocab, shape.hidden]}
    lines = []
    for name, (rows, cols) in shapes.items():
        local = [rows // tp, cols] if any(k in name for k in ROW_SPLIT) else [rows, cols // tp]
        numel = local[0] * local[1]
        lines.append(f"{name}: global {[rows, cols]} -> tp-local {local} -> ~{-(-numel // dp_shard)} elements "
                     f"per rank under ZeRO-3 (dp_shard {dp_shard})" if dp_shard > 1 else
                     f"{name}: global {[rows, cols]} -> tp-local {local}")
    return lines


def print_dry_run(prepared) -> None:
    run = prepared.resolved
    echo = lambda text: click.echo(text, err=True)  # noqa: E731
    for line in decision_lines(run):
        echo(line)
    echo(f"effective batch: {prepared.global_batch} sequences per optimizer step; {prepared.total_steps} steps")
    if run.model is not None:
        for line in expected_shapes(run.model, run.layout.tp, run.layout.dp_shard if run.zero3 else 1):
            echo(f"  {line}")
    echo("deepspeed config: " + json.dumps(prepared.ds_config, sort_keys=True))
