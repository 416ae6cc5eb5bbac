"""The --explain report: which Axolotl key became which DeepSpeed key and why, the layout, and the
resolved run's decisions (the same object `train --dry-run` shows and the ranks read)."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from ds_tp.translators.deepspeed import Translation
from ds_tp.translators.resolved import ResolvedRun


def _value(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 48 else text[:45] + "..."


def decision_lines(run: ResolvedRun) -> list[str]:
    """The resolved run in a few lines: layout and groups, ZeRO stage, precision, device, model."""
    layout = run.layout
    lines = [f"layout: {layout.product()}" + ("  (dp_shard inferred)" if layout.dp_shard_inferred else "")]
    for axis in ("tp", "cp", "dp"):
        groups = layout.groups(axis)
        shown = str(groups) if len(groups) <= 8 else str(groups[:8])[:-1] + ", ...]"
        lines.append(f"  {axis} groups: {shown}")
    lines.append(f"ZeRO stage {run.zero_stage}: {run.zero_why}"
                 + (f"; hpZ partition {run.hpz_partition_size}" if run.hpz_partition_size else ""))
    lines.append(f"precision {run.precision.name}: {run.precision.why}; tf32 {run.precision.tf32}")
    lines.append(f"trainable: {run.trainable}; LM head rank-local: {run.head_is_rank_local}; weights loaded "
                 f"{'partitioned' if run.loads_partitioned else 'whole'}; sequence padded to a multiple of "
                 f"{run.sequence_divisor}")
    lines.append(f"memory: {run.long_context.describe()}")
    device = run.device
    lines.append(f"device facts ({device.get('source')}): {device.get('name')}, bf16={device.get('bf16')}, "
                 f"tf32={device.get('tf32')}; 'auto' values were resolved against them, as train would")
    if run.model:
        m = run.model
        lines.append(f"model: {m.params / 1e6:.1f}M parameters, {m.layers} layers, hidden {m.hidden}, heads "
                     f"{m.heads} (kv {m.kv_heads}, head_dim {m.head_dim}), vocab {m.vocab}"
                     + (", tied embeddings" if m.tied else ""))
    return lines


def print_explain(translation: Translation, console: Console) -> None:
    table = Table(title="ds-tp translate: Axolotl keys -> DeepSpeed", show_lines=False)
    for column in ("from", "DeepSpeed key", "value", "why"):
        table.add_column(column, overflow="fold")
    for row in translation.rows:
        table.add_row(row.source, row.target, _value(row.value), row.why)
    console.print(table)
    run = translation.run
    assert run is not None
    for line in decision_lines(run):
        console.print(line, highlight=False, markup=False)
    cfg, layout = translation.config, run.layout
    micro, gas = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]
    console.print(f"effective batch = micro {micro} x gas {gas} x world {layout.world} / (tp {layout.tp} x "
                  f"cp {layout.cp}) = {micro * gas * layout.dp} sequences per optimizer step", highlight=False)
