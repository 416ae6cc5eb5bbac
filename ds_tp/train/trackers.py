"""The trackers Axolotl users already read, written by global rank 0 from the rows metrics.jsonl gets.

- use_tensorboard: TensorBoard event files in output_dir/runs (where HF Trainer, and so Axolotl, puts them),
  tags as HF Trainer names them: train/loss, train/learning_rate, train/grad_norm, eval/loss, ...
- wandb_project (and wandb_entity, wandb_name, wandb_run_id, wandb_mode): one wandb run with the resolved
  config; wandb_mode offline (or WANDB_MODE=offline) keeps it in output_dir/wandb for `wandb sync`.
  wandb_run_id with a resumed run continues that run (resume="allow").

ds-tp writes these itself rather than through DeepSpeed's monitors, which start a wandb run without its
name, id or mode and name the figures differently.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from ds_tp.errors import Problem, UserError

# metrics.jsonl keys -> HF Trainer's tag names; the rest keep their own name under train/ or eval/
RENAMED = {"lr": "learning_rate", "tokens_per_s": "tokens_per_second", "tokens_per_s_per_device":
           "tokens_per_second_per_device"}
SKIPPED = {"step", "total_steps", "skipped_steps"}


def wanted(cfg: dict) -> dict[str, bool]:
    return {"tensorboard": bool(cfg.get("use_tensorboard")),
            "wandb": bool(cfg.get("wandb_project")) and cfg.get("wandb_mode") != "disabled"}


def check_installed(cfg: dict, where) -> None:
    """Before launching: a tracker the config asks for must be importable (one line, exit 2, not a rank's
    traceback ten minutes in)."""
    problems = []
    for name, key in (("tensorboard", "use_tensorboard"), ("wandb", "wandb_project")):
        if wanted(cfg)[name] and importlib.util.find_spec(name) is None:
            problems.append(Problem(f"{key} needs the {name} package, which is not installed",
                                    where=where((key,)), key=key, hint=f"pip install {name}"))
    if problems:
        raise UserError(problems)


def tag(key: str) -> str:
    if key.startswith("eval_"):
        return f"eval/{RENAMED.get(key[5:], key[5:])}"
    return f"train/{RENAMED.get(key, key)}"


def scalars(row: dict) -> dict[str, float]:
    return {tag(k): float(v) for k, v in row.items() if k not in SKIPPED and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


class Trackers:
    def __init__(self, cfg: dict, output_dir: Path, start_step: int = 0):
        self.tb = self.run = None
        want = wanted(cfg)
        if want["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter
            # resumed: TensorBoard hides the interrupted attempt's points after the checkpoint's step
            self.tb = SummaryWriter(log_dir=str(Path(output_dir) / "runs"), purge_step=start_step + 1 if start_step else None)
        if want["wandb"]:
            import wandb
            run_id = cfg.get("wandb_run_id")
            self.run = wandb.init(project=cfg["wandb_project"], entity=cfg.get("wandb_entity"),
                                  name=cfg.get("wandb_name"), id=run_id, resume="allow" if run_id else None,
                                  mode=cfg.get("wandb_mode"), dir=str(output_dir), config=dict(cfg),
                                  settings=wandb.Settings(console="off", silent=True))

    def describe(self) -> str | None:
        parts = (["tensorboard: output_dir/runs"] if self.tb else []) + \
            ([f"wandb: run {self.run.id} ({self.run.settings.mode})"] if self.run else [])
        return "; ".join(parts) or None

    def write(self, row: dict) -> None:
        values = scalars(row)
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(name, value, row["step"])
            self.tb.flush()
        if self.run is not None:
            self.run.log(values, step=row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.run is not None:
            self.run.finish()
