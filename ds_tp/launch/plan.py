"""Everything decided before any rank starts: model path, prepared data, step counts, the final
DeepSpeed JSON. Written to output_dir/ds_tp/plan.json; ranks read it and nothing else."""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ds_tp.config import Config
from ds_tp.errors import Problem, UserError

PLAN_DIR = "ds_tp"
CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class RunPlan:
    config: dict
    layout: dict
    ds_config: dict
    precision: str
    device: dict
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
    resume_from: str | None = None
    use_profiler: bool = False
    notes: list[str] = field(default_factory=list)
    plugin_modules: list[str] = field(default_factory=list)

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> "RunPlan":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def resolve_model_path(base_model: str, config_dir: Path) -> str:
    """A local folder, a builtin asset (built on first use), or a hub name left to transformers' cache."""
    if base_model.startswith("builtin:"):
        from ds_tp.assets import resolve_builtin_model
        return str(resolve_builtin_model(base_model))
    for candidate in (Path(base_model), config_dir / base_model):
        if candidate.is_dir():
            return str(candidate.resolve())
    if base_model.startswith((".", "/", "~")):
        raise UserError(Problem(f"no such model folder {base_model!r}", key="base_model"))
    return base_model


def load_tokenizer(model_path: str, cfg: dict):
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(cfg.get("tokenizer_config") or model_path,
                                            trust_remote_code=bool(cfg.get("trust_remote_code")))
    except (OSError, ValueError) as exc:
        raise UserError(Problem(f"cannot load the tokenizer of {model_path!r}: {str(exc).splitlines()[0]}",
                                key="base_model", hint="a local folder, or a hub name already in the HF cache"))
    for name, value in (cfg.get("special_tokens") or {}).items():
        if value is not None:
            tok.add_special_tokens({name: value})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # as Axolotl: causal LMs often ship without a pad token
    return tok


def existing_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (DeepSpeed wrote them through our temp-and-rename), oldest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None
             and (p / "ds_tp_state.json").is_file()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int | None:
    """N of a `checkpoint-N` folder (ASCII digits only: "²".isdigit() is True but int() refuses it)."""
    tail = path.name[len(CHECKPOINT_PREFIX):]
    return int(tail) if path.name.startswith(CHECKPOINT_PREFIX) and tail.isascii() and tail.isdigit() else None


def check_output_dir(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to write over another run's results unless resuming or told to (--overwrite)."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise UserError(Problem(f"{output_dir} exists and is not a folder", key="output_dir"))
    ours = [p for p in output_dir.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) or p.name in
            ("metrics.jsonl", "latest", "config.json", "model.safetensors", PLAN_DIR)]
    links = [p.name for p in ours if p.is_symlink()]
    if links:  # writes into them would land outside output_dir
        raise UserError(Problem(f"{output_dir} holds symlinks where ds-tp writes ({', '.join(sorted(links))})",
                                key="output_dir", hint="ds-tp never writes through symlinks: remove them"))
    if not ours or resuming:
        return
    if not overwrite:
        raise UserError(Problem(f"{output_dir} already holds a run ({', '.join(sorted(p.name for p in ours)[:3])}"
                                "...)", key="output_dir", hint="pass --auto-resume-from-checkpoints to continue it, "
                                "--overwrite to replace it, or choose another --output-dir"))
    for path in ours:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def schedule(cfg: dict, train_rows: int, global_batch: int) -> tuple[int, int]:
    """(steps_per_epoch, total_steps). The last incomplete global batch of an epoch is dropped."""
    steps_per_epoch = train_rows // global_batch
    if steps_per_epoch == 0:
        raise UserError(Problem(f"the training data has {train_rows} rows, fewer than one global batch of "
                                f"{global_batch} (micro x gas x data-parallel ranks)", key="micro_batch_size",
                                hint="lower micro_batch_size or gradient_accumulation_steps, or add data"))
    total = cfg.get("max_steps") or math.ceil(float(cfg.get("num_epochs", 1)) * steps_per_epoch)
    return steps_per_epoch, int(total)


def every(cfg: dict, steps_key: str, per_epoch_key: str, steps_per_epoch: int) -> int | None:
    if cfg.get(steps_key):
        return int(cfg[steps_key])
    if cfg.get(per_epoch_key):
        return max(1, steps_per_epoch // int(cfg[per_epoch_key]))
    return None


def build_plan(cfg: Config, *, device: dict, resume_from: str | None, use_profiler: bool,
               overwrite: bool, check_output: bool = True) -> RunPlan:
    from transformers import AutoConfig

    from ds_tp.data import prepare_datasets
    from ds_tp.ds_config import build_ds_config
    from ds_tp.translators.deepspeed import TrainFacts
    from ds_tp.translators.layout import effective_batch

    values = cfg.values
    output_dir = Path(values.get("output_dir", "./model-out"))
    if check_output:
        check_output_dir(output_dir, resuming=bool(resume_from), overwrite=overwrite)
    model_path = resolve_model_path(values["base_model"], cfg.source.parent)
    tokenizer = load_tokenizer(model_path, values)
    try:
        model_cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=bool(values.get("trust_remote_code")))
    except (OSError, ValueError) as exc:
        raise UserError(Problem(f"cannot load the model config of {model_path!r}: {str(exc).splitlines()[0]}",
                                where=cfg.where(("base_model",)), key="base_model"))
    from ds_tp.config.rules import shape_findings
    from ds_tp.config import to_problem
    shape_errors = shape_findings(model_cfg.to_dict(), cfg.layout)
    if shape_errors:
        raise UserError([to_problem(cfg.source, cfg.marks, f) for f in shape_errors])
    prepared = prepare_datasets(values, tokenizer, config_dir=cfg.source.parent)
    global_batch = effective_batch(values["micro_batch_size"], values["gradient_accumulation_steps"], cfg.layout)
    steps_per_epoch, total = schedule(values, prepared.train_rows, global_batch)
    facts = TrainFacts(hidden_size=getattr(model_cfg, "hidden_size", None), total_steps=total)
    translation, _ = build_ds_config(cfg, device, facts)
    logging_steps = values.get("logging_steps") or max(min(int(0.005 * total), 10), 1)
    notes = [f"{prepared.train_rows} training rows ({'cached' if prepared.cache_hit else 'prepared'} in "
             f"{prepared.path}), {prepared.dropped_long} dropped as longer than sequence_len"]
    return RunPlan(config=values, layout=asdict(cfg.layout), ds_config=translation.config,
                   precision=translation.precision, device=device, model_path=model_path,
                   prepared_path=str(prepared.path), output_dir=str(output_dir), train_rows=prepared.train_rows,
                   eval_rows=prepared.eval_rows, global_batch=global_batch, steps_per_epoch=steps_per_epoch,
                   total_steps=total, logging_steps=logging_steps,
                   save_steps=every(values, "save_steps", "saves_per_epoch", steps_per_epoch),
                   eval_steps=every(values, "eval_steps", "evals_per_epoch", steps_per_epoch) if prepared.eval_rows
                   else None, resume_from=resume_from, use_profiler=use_profiler, notes=notes,
                   plugin_modules=cfg.plugin_modules)
