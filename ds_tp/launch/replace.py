"""`--overwrite` without losing the old run before the new one exists.

The old run's files (checkpoints, metrics, the exported model, ds_tp/) are moved aside into
output_dir/replaced-run-<time>/ by one rename each (same folder, so no copy and no extra disk) just
before the launcher starts. They are deleted once the new run has really started, that is once it has
logged a step or saved a checkpoint; if the new run ends before that (a bad node, an OOM at load, a
Ctrl-C), the new run's files are removed and the old ones renamed back. A hard kill of ds-tp itself
leaves the old run whole in replaced-run-<time>/.
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from ds_tp.runfiles import CHECKPOINT_PREFIX, METRICS, STATE_FILE, run_files

ASIDE_PREFIX = "replaced-run-"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class Replacement:
    """The previous run, moved aside until the new one has started (then deleted) or has failed (then back)."""

    def __init__(self, output_dir: Path, names: list[str]):
        self.output_dir = Path(output_dir)
        self.aside = self.output_dir / f"{ASIDE_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
        self.names = names
        self.outcome: str | None = None  # "removed" | "restored"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def move_aside(cls, output_dir: Path) -> "Replacement | None":
        found = run_files(output_dir)
        if not found:
            return None
        replacement = cls(output_dir, sorted(p.name for p in found))
        replacement.aside.mkdir()
        for path in found:
            path.rename(replacement.aside / path.name)
        return replacement

    def new_run_started(self) -> bool:
        """A logged step (a line in metrics.jsonl) or a complete checkpoint of the new run."""
        metrics = self.output_dir / METRICS
        try:
            if metrics.is_file() and metrics.read_text(encoding="utf-8", errors="replace").strip():
                return True
        except OSError:
            return False
        return any((p / STATE_FILE).is_file() for p in self.output_dir.glob(f"{CHECKPOINT_PREFIX}*"))

    def remove_if_started(self) -> bool:
        with self._lock:
            if self.outcome is None and self.new_run_started():
                shutil.rmtree(self.aside)
                self.outcome = "removed"
            return self.outcome is not None

    def watch(self, interval: float = 1.0) -> "Replacement":
        """Delete the old run as soon as the new one has started (a thread polling the output folder)."""
        def poll():
            while not self._stop.is_set() and not self.remove_if_started():
                self._stop.wait(interval)
        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def settle(self) -> str:
        """After the launcher: the old run removed (the new one started) or put back (it never did)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.remove_if_started():
            return f"the previous run in {self.output_dir} was replaced"
        with self._lock:
            for path in run_files(self.output_dir):  # what the new run left before its first step
                _remove(path)
            for name in self.names:
                (self.aside / name).rename(self.output_dir / name)
            self.aside.rmdir()
            self.outcome = "restored"
        return f"this run never logged a step: the previous run in {self.output_dir} is back in place"
