"""What rank 0 reports: metrics.jsonl (whole lines, flushed), and its events for the console."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


class MetricsLog:
    """output_dir/metrics.jsonl, written by global rank 0 only. One JSON object per logged step."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.last_row: dict = {}  # the last row kept from before a resume (its train_s continues)
        if resume_step is not None:
            self.last_row = truncate_after_step(path, resume_step)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row, allow_nan=True) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def truncate_after_step(path: Path, step: int) -> dict:
    """Keep only rows up to `step` (and drop a half-written last line): the file reads as one run. Returns the
    last training row kept ({} if none)."""
    if not path.exists():
        return {}
    keep, last = [], {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            keep.append(line)
            last = row if "loss" in row else last
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    tmp.replace(path)
    return last


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


def brief(row: dict) -> str:
    """The latest figures under the progress bar: loss, lr, grad norm, tokens/s, memory, MFU."""
    parts = [f"loss {row['loss']:.4f}"] if "loss" in row else []
    if "rewards/accuracies" in row:
        parts.append(f"reward_acc {row['rewards/accuracies']:.2f}")
    if "lr" in row:
        parts.append(f"lr {row['lr']:.2g}")
    if row.get("grad_norm") is not None and not math.isnan(row["grad_norm"]):
        parts.append(f"gnorm {row['grad_norm']:.3g}")
    if "tokens_per_s" in row:
        parts.append(f"{row['tokens_per_s']:.0f} tok/s")
    if row.get("peak_mem_gib") is not None:
        parts.append(f"{row['peak_mem_gib']:.1f} GiB")
    if row.get("mfu") is not None:
        parts.append(f"MFU {100 * row['mfu']:.1f}%")
    return " | ".join(parts)


CONSOLE_ENV = "DS_TP_CONSOLE"  # set by `ds-tp train`: the file rank 0 streams its events to


class ConsoleEvents:
    """What rank 0 tells the user. Printed to its stdout (the rank's log file under `ds-tp train`, the
    terminal or a test's capture otherwise) and, when `ds-tp train` launched the rank, appended as JSON
    lines to output_dir/ds_tp/console.jsonl, from which the launching process draws the progress bar or
    the plain lines (launch/console.py): {"start", "total"}, {"step"} every step, {"row"} per logging
    step or eval, {"say"} for a message."""

    def __init__(self, path: str | None = None):
        path = path if path is not None else os.environ.get(CONSOLE_ENV)
        self.file = open(path, "a", encoding="utf-8") if path else None

    def _emit(self, event: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(event, allow_nan=True) + "\n")
            self.file.flush()

    def say(self, text: str) -> None:
        print(f"[ds-tp] {text}", flush=True)
        self._emit({"say": text})

    def start(self, step: int, total: int) -> None:
        self._emit({"start": step, "total": total})

    def update(self, step: int, row: dict | None) -> None:
        if row:
            print(fmt(row), flush=True)
            self._emit({"row": row})
        else:
            self._emit({"step": step})

    def close(self) -> None:  # the process's one stream stays open for the messages after training
        if self.file is not None:
            self.file.flush()


_EVENTS: ConsoleEvents | None = None


def console() -> ConsoleEvents:
    """This process's one event stream (rank 0's messages and progress share it, in order)."""
    global _EVENTS
    if _EVENTS is None:
        _EVENTS = ConsoleEvents()
    return _EVENTS
