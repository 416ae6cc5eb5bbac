"""What rank 0 reports: metrics.jsonl (whole lines, flushed), and a progress bar or log lines."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


class MetricsLog:
    """output_dir/metrics.jsonl, written by global rank 0 only. One JSON object per logged step."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None:
            truncate_after_step(path, resume_step)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row, allow_nan=True) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def truncate_after_step(path: Path, step: int) -> None:
    """Keep only rows up to `step` (and drop a half-written last line): the file reads as one run."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    tmp.replace(path)


def fmt(row: dict) -> str:
    parts = [f"step {row['step']}/{row['total_steps']}"]
    if "loss" in row:
        parts.append(f"loss {row['loss']:.4f}")
    if "eval_loss" in row:
        parts.append(f"eval_loss {row['eval_loss']:.4f}")
    for prefix in ("", "eval_"):  # preference tuning (rl:): TRL's reward figures
        if f"{prefix}rewards/accuracies" in row:
            parts.append(f"{prefix}reward_acc {row[f'{prefix}rewards/accuracies']:.2f} "
                         f"margin {row[f'{prefix}rewards/margins']:.3f}")
    if "lr" in row:
        parts.append(f"lr {row['lr']:.3g}")
    if row.get("grad_norm") is not None and not math.isnan(row["grad_norm"]):
        parts.append(f"grad_norm {row['grad_norm']:.3f}")
    if "tokens_per_s" in row:
        parts.append(f"{row['tokens_per_s']:.0f} tok/s ({row['tokens_per_s_per_device']:.0f}/dev)")
    if row.get("peak_mem_gib") is not None:
        parts.append(f"mem {row['peak_mem_gib']:.2f} GiB")
    if row.get("mfu") is not None:
        parts.append(f"MFU {100 * row['mfu']:.1f}%")
    if row.get("skipped_steps"):
        parts.append(f"{row['skipped_steps']} non-finite step(s) skipped")
    return " | ".join(parts)


class Progress:
    """A rich progress bar on a terminal; plain log lines otherwise (CI logs, pipes)."""

    def __init__(self, total: int, start: int):
        self.bar = None
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar
            self.bar = Bar(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           TextColumn("{task.fields[status]}"))
            self.task = self.bar.add_task("train", total=total, completed=start, status="")
            self.bar.start()

    def update(self, step: int, row: dict | None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, **({"status": fmt(row)} if row else {}))
            if row:
                self.bar.console.print(fmt(row))
        elif row:
            print(fmt(row), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
