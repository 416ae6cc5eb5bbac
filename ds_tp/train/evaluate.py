"""`ds-tp evaluate`: the model's loss (and perplexity) on the config's splits, as Axolotl's evaluate reports
them (train and eval, eval_summary.csv in output_dir), on the same layout machinery as training.

rl: configs are refused before launch (the reference would be the evaluated model). The model is what Axolotl
evaluates: base_model, with the adapter of lora_model_dir when the config has one.
It goes through deepspeed.initialize without an optimizer (ZeRO-3 keeps it partitioned, AutoTP splits it),
and the loss is the trainer's own token-weighted eval loss, so it equals the eval_loss that training logged
for the same weights.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path


def evaluate_model(plan, run, mesh, model, attn: str, data: tuple, log) -> dict[str, float]:
    import deepspeed

    from ds_tp.train.loop import Trainer
    from ds_tp.train.reference import reference_ds_config

    for param in model.parameters():
        param.requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(model=model, config=reference_ds_config(plan.ds_config), mpu=mesh.mpu)
    train_rows, eval_rows, pad_id, flops_token, peak = data
    trainer = Trainer(plan, run, mesh, engine, train_rows, eval_rows, pad_id, flops_token, peak, log)
    results: dict[str, float] = {}
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        if rows is None or len(rows) == 0:
            continue
        trainer.eval_rows = rows
        loss = trainer.evaluate()
        results[f"{split}_loss"] = loss
        results[f"{split}_perplexity"] = math.exp(min(loss, 700.0))
        log(f"{split}: " + ", ".join(f"{k.removeprefix(split + '_')} {v:.6g}" for k, v in results.items()
                                      if k.startswith(split + "_")) + f" ({len(rows)} rows)")
    if mesh.is_main:  # the config's output_dir (plan.output_dir is evaluate's own root inside it)
        path = write_summary(Path(plan.config.get("output_dir", "./model-out")), results)
        log(f"wrote {path}")
    return results


def write_summary(output_dir: Path, results: dict[str, float]) -> Path:
    """output_dir/eval_summary.csv as Axolotl writes it: metric, training, validation."""
    output_dir.mkdir(parents=True, exist_ok=True)
    names = sorted({k.split("_", 1)[1] for k in results})
    path = output_dir / "eval_summary.csv"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "training", "validation"])
        for name in names:
            writer.writerow([name, results.get(f"train_{name}", ""), results.get(f"eval_{name}", "")])
    os.replace(tmp, path)
    return path
