"""Every file a run leaves in output_dir, named in one place, and the records ranks read.

    output_dir/
      ds_tp/run.json               PreparedRun: everything decided before any rank starts
      ds_tp/resolved_config.json   the config after defaults and overrides
      ds_tp/deepspeed_config.json  the DeepSpeed JSON the ranks run
      ds_tp/ranks/rank-N.json|.error, ds_tp/preempted.json, ds_tp/deepspeed_env
      ds_tp/logs/rank-N.log        each rank's own output (DeepSpeed, torch, transformers), appended per launch
      ds_tp/logs/launcher.log      the launcher's output; ds_tp/console.jsonl: what rank 0 tells the user
      checkpoint-N/                DeepSpeed's files + ds_tp_state.json (written last: complete)
      tmp-save-N/                  a checkpoint being written (never resumed from)
      latest, metrics.jsonl, config.json, model*.safetensors, tokenizer files
      runs/ (tensorboard), wandb/, training_curves.png
      ds_tp_evaluate/ds_tp/        `ds-tp evaluate`'s run files, never a training run's; eval_summary.csv
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ds_tp.errors import UserError

RUN_DIR = "ds_tp"
RUN_FILE = "run.json"
RESOLVED_CONFIG = "resolved_config.json"
DEEPSPEED_CONFIG = "deepspeed_config.json"
RANKS_DIR = "ranks"
PREEMPTED = "preempted.json"
ENV_FILE = "deepspeed_env"
LOGS_DIR = "logs"
LAUNCHER_LOG = "launcher.log"
EVALUATE_DIR = "ds_tp_evaluate"  # `ds-tp evaluate`'s own root in output_dir: its run file, rank records, logs
EVAL_SUMMARY = "eval_summary.csv"  # Axolotl's file name
CONSOLE = "console.jsonl"
STATE_FILE = "ds_tp_state.json"
STATE_FORMAT = 1  # ds_tp_state.json's format; bump when its keys change meaning
CHECKPOINT_PREFIX = "checkpoint-"
TMP_SAVE_PREFIX = "tmp-save-"
LATEST = "latest"
METRICS = "metrics.jsonl"
MODEL_FILES = ("config.json", "model.safetensors")  # what marks a finished export in output_dir
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # ... of an adapter run
TRACKER_FILES = ("runs", "wandb", "training_curves.png")  # tensorboard, wandb offline, the curves


def run_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / RUN_DIR


def logs_dir(output_dir: str | Path) -> Path:
    return run_dir(output_dir) / LOGS_DIR


def rank_log(output_dir: str | Path, rank: int) -> Path:
    return logs_dir(output_dir) / f"rank-{rank}.log"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def tmp_save_tag(step: int) -> str:
    return f"{TMP_SAVE_PREFIX}{step}"


def checkpoint_step(path: Path) -> int | None:
    """N of a `checkpoint-N` folder (ASCII digits only: "²".isdigit() is True but int() refuses it)."""
    tail = path.name[len(CHECKPOINT_PREFIX):]
    return int(tail) if path.name.startswith(CHECKPOINT_PREFIX) and tail.isascii() and tail.isdigit() else None


def existing_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (DeepSpeed wrote them through ds-tp's temp-and-rename), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def run_files(output_dir: Path) -> list[Path]:
    """What a run leaves in output_dir (the names above): what --overwrite replaces and what marks a run."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return [p for p in output_dir.iterdir() if p.name.startswith((CHECKPOINT_PREFIX, TMP_SAVE_PREFIX))
            or p.name in (METRICS, LATEST, RUN_DIR, *MODEL_FILES, *ADAPTER_FILES, *TRACKER_FILES)]


def write_state(checkpoint: Path, state: dict) -> None:
    (checkpoint / STATE_FILE).write_text(json.dumps({"format": STATE_FORMAT, **state}, indent=1))


def read_state(checkpoint: Path) -> dict:
    """ds-tp's state of a checkpoint, or one line naming the file when it is missing or unreadable."""
    path = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{checkpoint}: not a complete ds-tp checkpoint (no {STATE_FILE})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: unreadable checkpoint state ({exc})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise UserError(f"{path}: not a ds-tp checkpoint state (no step)")
    if state.get("format", STATE_FORMAT) > STATE_FORMAT:
        raise UserError(f"{path}: written by a newer ds-tp (state format {state['format']}, this one reads "
                        f"up to {STATE_FORMAT})")
    return state


@dataclass
class PreparedRun:
    """Everything decided before any rank starts, written to output_dir/ds_tp/run.json; ranks read it
    and nothing else. `run` is translators.resolved.ResolvedRun.to_dict(): the decisions."""

    config: dict
    run: dict
    ds_config: dict
    model_path: str
    prepared_path: str
    output_dir: str
    train_rows: int
    eval_rows: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    logging_steps: int
    save_steps: int | None
    eval_steps: int | None
    schedule: dict = field(default_factory=dict)  # translators.schedule.Schedule, its step counts filled in
    resume_from: str | None = None
    resume_other_layout: bool = False  # resume_from was saved on another layout: train/reshard.py loads it
    yaml_gas: int | None = None  # gradient_accumulation_steps as the YAML wrote it (a resume may change config's)
    use_profiler: bool = False
    notes: list[str] = field(default_factory=list)
    plugin_modules: list[str] = field(default_factory=list)
    mode: str = "train"  # or "evaluate": `ds-tp evaluate`, the model's losses on the splits, no training

    @property
    def resolved(self):
        from ds_tp.translators.resolved import ResolvedRun
        return ResolvedRun.from_dict(self.run)

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> "PreparedRun":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def rank_dir(output_dir: str | Path) -> Path:
    return run_dir(output_dir) / RANKS_DIR


HEARTBEAT_S = 5.0  # a rank touches its record this often; launch/watch.py reads the silence of remote ranks


def record_rank_start(output_dir: str | Path, rank: int) -> None:
    """rank-N.json (pid, host), then a daemon thread touching it every HEARTBEAT_S for as long as the
    process runs, even while it waits in a collective: a record that stops changing is a rank that died
    or hangs, wherever it runs (the launching host sees other hosts' ranks only through shared storage)."""
    import threading
    import time

    folder = rank_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank-{rank}.json"
    path.write_text(json.dumps({"rank": rank, "pid": os.getpid(), "host": socket.gethostname()}))

    def beat():
        while True:
            time.sleep(HEARTBEAT_S)
            try:
                os.utime(path)
            except OSError:
                return
    threading.Thread(target=beat, daemon=True, name="ds-tp-heartbeat").start()


def record_rank_end(output_dir: str | Path, rank: int) -> None:
    """rank-N.done: this rank finished on its own (its exit is not a failure)."""
    (rank_dir(output_dir) / f"rank-{rank}.done").write_text("")


def record_rank_error(output_dir: str | Path, rank: int, message: str) -> None:
    folder = rank_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{rank}.error").write_text(message)
