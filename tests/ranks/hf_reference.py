"""The trainer Axolotl runs, as the reference: transformers.Trainer given the same model, the same rows
in the same order (ds-tp's batch order, collated by ds-tp: equal data by construction) and the
TrainingArguments Axolotl's trainer builder would make from the same config.

ds-tp's side runs through the real code path: prepare_training here, then the rank worker. Many
one-process runs share one spawned process (the worker runs once per run file), so a tier of a few
dozen runs pays the interpreter, torch and DeepSpeed start-up once.
"""
from __future__ import annotations

import json
import traceback
from pathlib import Path

import yaml

from ds_tp.launch.train import prepare_training
from ds_tp.runfiles import PreparedRun
from tests.conftest import EXAMPLES
from tests.spawn import run_ranks

# A one-process run: 12 optimizer steps of micro 2 x gas 2 packed rows of 64 tokens, fp32 on the CPU.
BASE = {
    "base_model": "builtin:tiny-llama",
    "datasets": [{"path": str(EXAMPLES / "quickstart" / "data" / "tasks.jsonl"), "type": "alpaca"}],
    "sequence_len": 64, "sample_packing": True, "dp_shard_size": 1, "micro_batch_size": 2,
    "gradient_accumulation_steps": 2, "max_steps": 12, "learning_rate": 2e-3, "lr_scheduler": "cosine",
    "warmup_steps": 3, "optimizer": "adamw_torch", "weight_decay": 0.3, "max_grad_norm": 1.0, "bf16": False,
    "logging_steps": 1, "seed": 42,
}


def prepare(folder: Path, name: str, config: dict, shared: Path, world: int = 1) -> Path:
    """Write the case's YAML and prepare its run for `world` ranks (data cached in `shared`); the run file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = folder / name
    _, _, plan_path, _, _ = prepare_training(path, ["--output-dir", str(out), "--dataset-prepared-path",
                                                    str(shared)], world)
    return Path(plan_path)


def _train_each(run_files: list[str]) -> None:
    """Rank 0 of a world of 1: train every prepared run in turn; a failing run leaves its traceback in
    output_dir/ds_tp/failed.txt and the others still run."""
    import os

    from ds_tp.train.worker import main as worker_main
    rank = int(os.environ.get("RANK", 0))
    for run_file in run_files:
        try:
            worker_main(["--run-file", run_file])
        except Exception:  # noqa: BLE001 - recorded for the case's own test
            Path(run_file).with_name(f"failed-{rank}.txt" if rank else "failed.txt").write_text(traceback.format_exc())


def train_all(run_files: list[Path], timeout: float = 900, world: int = 1) -> None:
    """Train every prepared run in turn in one spawned group of `world` ranks (all runs of one world size)."""
    run_ranks(_train_each, world, [str(p) for p in run_files], timeout=timeout)


def ds_tp_rows(run_file: Path) -> tuple[list[dict], list[dict]]:
    """(training rows, eval rows) of ds-tp's metrics.jsonl; a failed run raises with its traceback."""
    failed = sorted(run_file.parent.glob("failed*.txt"))
    if failed:
        raise AssertionError("ds-tp's run failed:\n" + "\n".join(f.read_text() for f in failed))
    out = Path(PreparedRun.read(run_file).output_dir)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r]


def training_arguments(cfg: dict, plan: PreparedRun, out: Path, args_cls=None, **extra):
    """TrainingArguments as Axolotl's trainer builder maps these config keys (core/builders/base.py):
    its own schedules (rex, one_cycle) run as cosine plus alternate_lr_scheduler_type, a mapping of
    optim_args becomes "k=v,k=v", adam_* only when set."""
    from transformers import TrainingArguments
    args_cls = args_cls or TrainingArguments
    kwargs = dict(
        output_dir=str(out), max_steps=plan.total_steps, per_device_train_batch_size=cfg["micro_batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"], learning_rate=float(cfg["learning_rate"]),
        weight_decay=float(cfg.get("weight_decay", 0.0)), max_grad_norm=float(cfg.get("max_grad_norm", 1.0)),
        lr_scheduler_type=cfg["lr_scheduler"], lr_scheduler_kwargs=cfg.get("lr_scheduler_kwargs") or {},
        warmup_steps=cfg["warmup_steps"], optim=cfg["optimizer"], logging_steps=1, report_to="none",
        save_strategy="no", use_cpu=True, seed=int(cfg.get("seed", 42)), disable_tqdm=True,
        remove_unused_columns=False, dataloader_drop_last=False)
    if cfg["lr_scheduler"] in ("rex", "one_cycle"):
        kwargs.update(lr_scheduler_type="cosine", alternate_lr_scheduler_type=cfg["lr_scheduler"])
    optim_args = cfg.get("optim_args")
    if optim_args:
        kwargs["optim_args"] = ",".join(f"{k}={v}" for k, v in optim_args.items()) \
            if isinstance(optim_args, dict) else optim_args
    for key in ("adam_beta1", "adam_beta2", "adam_epsilon"):
        if cfg.get(key) is not None:
            kwargs[key] = float(cfg[key])
    kwargs.update(extra)
    return args_cls(**kwargs)


def hf_train(cfg: dict, run_file: Path, out: Path, trainer_mixins: tuple = (), args_cls=None):
    """Train with transformers.Trainer on ds-tp's rows in ds-tp's order; (training logs, eval logs) as
    Trainer.state.log_history holds them."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer

    from ds_tp.data import load_prepared
    from ds_tp.model_config import load_tokenizer
    from ds_tp.train.batches import BatchOrder, collate

    plan = PreparedRun.read(run_file)
    rows, eval_rows = load_prepared(Path(plan.prepared_path))
    micro, gas = int(cfg["micro_batch_size"]), int(cfg["gradient_accumulation_steps"])
    order = BatchOrder(rows=len(rows), micro=micro, gas=gas, dp=1, seed=int(cfg.get("seed", 42)),
                       steps_per_epoch=plan.steps_per_epoch)
    in_order = [rows[int(i)] for step in range(plan.total_steps) for i in order.global_rows(step)]
    pad_id = load_tokenizer(plan.model_path, cfg).pad_token_id

    def collator(batch):
        out = collate(batch, pad_id)
        labels = torch.full_like(out["input_ids"], -100)
        labels[:, 1:] = out.pop("shift_labels")[:, :-1]  # the unshifted labels the model shifts itself
        return {**out, "labels": labels}

    class InOrder(*trainer_mixins, Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    extra = {}
    evaluation = list(eval_rows) if eval_rows is not None and plan.eval_steps else None
    if evaluation:  # one batch holding the whole split: its loss is the token-weighted mean ds-tp reports
        extra = dict(eval_strategy="steps", eval_steps=plan.eval_steps, per_device_eval_batch_size=len(evaluation),
                     metric_for_best_model="loss")
    args = training_arguments(cfg, plan, out, args_cls, **extra)
    torch.manual_seed(int(cfg.get("seed", 42)))
    model = AutoModelForCausalLM.from_pretrained(plan.model_path, dtype=torch.float32, attn_implementation="sdpa")
    trainer = InOrder(model=model, args=args, train_dataset=in_order, eval_dataset=evaluation, data_collator=collator)
    trainer.train()
    history = trainer.state.log_history
    return [h for h in history if "loss" in h], [h for h in history if "eval_loss" in h]
