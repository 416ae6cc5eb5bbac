"""The --explain report: which Axolotl key became which DeepSpeed key and why, and the layout."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from ds_tp.translators.layout import Layout
from ds_tp.translators.deepspeed import Translation


def _value(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 48 else text[:45] + "..."


def print_explain(translation: Translation, layout: Layout, device: dict, console: Console) -> None:
    table = Table(title="ds-tp translate: Axolotl keys -> DeepSpeed", show_lines=False)
    for column in ("from", "DeepSpeed key", "value", "why"):
        table.add_column(column, overflow="fold")
    for row in translation.rows:
        table.add_row(row.source, row.target, _value(row.value), row.why)
    console.print(table)
    console.print(f"layout: {layout.product()}" + ("  (dp_shard inferred)" if layout.dp_shard_inferred else ""))
    for axis in ("tp", "cp", "dp"):
        groups = layout.groups(axis)
        shown = ", ".join(str(g) for g in groups[:8]) + (" ..." if len(groups) > 8 else "")
        console.print(f"  {axis} groups: {shown}")
    cfg = translation.config
    micro, gas = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]
    console.print(f"effective batch = micro {micro} x gas {gas} x world {layout.world} / (tp {layout.tp} x "
                  f"cp {layout.cp}) = {micro * gas * layout.dp} sequences per optimizer step")
    console.print(f"device facts ({device.get('source')}): {device.get('name')}, bf16={device.get('bf16')}, "
                  f"tf32={device.get('tf32')}; 'auto' values were resolved against them, as train would here")
