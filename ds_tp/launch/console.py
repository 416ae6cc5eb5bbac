"""What `ds-tp train` shows while the ranks run: rank 0's events (output_dir/ds_tp/console.jsonl, written by
train/metrics.ConsoleEvents) as a live progress bar when stderr is a terminal, as plain lines otherwise.

The ranks' own output (DeepSpeed, torch, transformers) goes to output_dir/ds_tp/logs/, so the console holds
only ds-tp's messages, the bar (step/total, elapsed, ETA, the latest loss, lr, grad norm, tokens/s, memory,
MFU), eval results and saves. Plain mode (CI, a log file, `| tee`) prints one line per logging step.
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from ds_tp.train.metrics import brief, fmt


class ConsoleView:
    def __init__(self, path: Path, live: bool, poll_s: float = 0.2):
        self.path, self.live, self.poll_s = Path(path), live, poll_s
        self._offset, self._partial = 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.bar = self.task = None
        self.last_step = 0

    def start(self) -> "ConsoleView":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._read()  # whatever came after the last poll
        if self.bar is not None:
            self.bar.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._read()

    def _read(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # a line still being written
        for line in lines:
            try:
                self.show(json.loads(line))
            except (ValueError, KeyError, TypeError):  # a line the view cannot read is skipped, not fatal
                continue

    # --- one event ------------------------------------------------------------------------------
    def show(self, event: dict) -> None:
        if "start" in event:
            self._start(int(event["start"]), int(event["total"]))
        elif "step" in event:
            self._advance(int(event["step"]), None)
        elif "row" in event:
            self._advance(int(event["row"]["step"]), event["row"])
        elif "say" in event:
            self._print(f"ds-tp: {event['say']}")

    def _start(self, step: int, total: int) -> None:
        self.last_step = step
        if not self.live or self.bar is not None:
            return
        self.bar = _bar()
        self.task = self.bar.add_task("train", total=total, completed=step)
        self.bar.start()

    def _advance(self, step: int, row: dict | None) -> None:
        self.last_step = step
        eval_row = row is not None and "eval_loss" in row
        if self.bar is not None:
            self.bar.update(self.task, completed=step)
            if row and not eval_row:
                self.bar.status = brief(row)
            if eval_row:
                self._print(f"eval at step {step}: {fmt(row).split(' | ', 1)[1]}")
        elif row is not None:
            self._print(fmt(row))

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)  # the terminal wraps
        else:
            print(text, flush=True)


def _bar():
    """Two lines: `train ━━━━━━━━━━━━━━━━━━━━ 30/60 0:00:05 eta 0:00:07`, and under it the latest figures
    (which wrap rather than squeeze the bar on an 80-column terminal)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class TrainingBar(Progress):
        status = ""

        def get_renderables(self):
            yield self.make_tasks_table(self.tasks)
            if self.status:
                yield Text("  " + self.status)

    return TrainingBar(TextColumn("[bold]train"), BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True), refresh_per_second=4)


def quiet_libraries() -> None:
    """This process's share of the quiet console: third-party loggers (bitsandbytes' kernel probe, DeepSpeed,
    transformers) at ERROR and library FutureWarnings/DeprecationWarnings hidden. ds-tp's own notices are
    printed by ds-tp, not logged, so they still show."""
    import logging
    import warnings

    for name in ("bitsandbytes", "deepspeed", "DeepSpeed", "transformers", "torch.distributed", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


def live_console() -> bool:
    """The bar only on a terminal: CI logs, files and pipes get plain lines."""
    return sys.stderr.isatty()
