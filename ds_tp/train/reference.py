"""The reference model of preference tuning (dpo, ipo, kto), as ResolvedRun.preference.reference decides:

- adapter-disabled: the policy's own engine with peft's adapter switched off (LoRA/QLoRA: the base)
- frozen-copy: a second copy of the starting model through deepspeed.initialize with the policy's layout
  (ZeRO-3-partitioned, AutoTP-split, Ulysses) and no optimizer, never stepped
- precomputed: every row's reference log-probs computed once before the first step, with the starting
  weights (for a full fine-tune that is the policy itself before it trains, so no copy is ever held),
  and cached next to the prepared data as reference-<fingerprint>.npz for later runs and resumes
- none: orpo and simpo

Reference log-probs are taken without gradients through the same batches and the same per-sequence
sums as the policy's, so a precomputed reference and a live one give the same values.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch


class Reference:
    def __init__(self, mode: str, engine=None, frozen=None, keep_alive=None):
        self.mode = mode
        self.engine = engine  # the policy's engine (adapter-disabled; precomputing a fresh full fine-tune)
        self.frozen = frozen  # frozen-copy: its own engine
        self.keep_alive = keep_alive
        self.cached: dict[str, np.ndarray] = {}  # precomputed: split -> (rows, 2)

    def _model_context(self):
        if self.mode == "adapter-disabled" or (self.mode == "precomputed" and self.frozen is None
                                               and hasattr(self.engine.module, "disable_adapter")):
            return self.engine.module.disable_adapter()
        return nullcontext()

    @torch.no_grad()
    def live(self, batch: dict, shifts: list, trainer) -> torch.Tensor:
        model = self.frozen if self.frozen is not None else self.engine
        with self._model_context():
            return trainer.sequence_logps(model, batch, shifts[:1])[0][0].detach()

    def logps(self, rows: list[dict], batch: dict, shifts: list, trainer) -> torch.Tensor | None:
        """(2 x rows,) reference log-probs: first sequences, then second sequences; None without a reference."""
        if self.mode == "none":
            return None
        if self.mode == "precomputed":
            table = np.stack([self.cached[r["_split"]][r["_index"]] for r in rows])  # (rows, 2)
            return torch.from_numpy(np.concatenate([table[:, 0], table[:, 1]])).to(trainer.device, torch.float32)
        return self.live(batch, shifts, trainer)

    # --- precomputing -----------------------------------------------------------------------
    def precompute(self, trainer, cache_file: Path, log) -> None:
        """Fill self.cached from cache_file, or compute it (every rank takes its data-parallel share, one
        all-reduce gathers the whole table) and have rank 0 write it."""
        if cache_file.exists():
            with np.load(cache_file) as data:
                self.cached = {k: data[k] for k in data.files}
            if len(self.cached.get("train", ())) == len(trainer.train_rows):
                log(f"reference log-probs from {cache_file}")
                return
        splits = {"train": trainer.train_rows}
        if trainer.eval_rows is not None:
            splits["eval"] = trainer.eval_rows
        trainer.engine.eval()
        for name, rows in splits.items():
            self.cached[name] = self._compute(trainer, rows)
        trainer.engine.train()
        # ZeRO-3 recorded its prefetch order from these no-grad forwards; start training from a clean slate
        # (else parameters prefetched in that order are still in flight when the export gathers them)
        trainer.engine.empty_partition_cache()
        self.frozen = self.keep_alive = None  # a copy built only to precompute (a resumed full fine-tune) goes
        if trainer.mesh.is_main:
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.npz")
            np.savez(tmp, **self.cached)
            os.replace(tmp, cache_file)
        log(f"reference log-probs of {sum(len(v) for v in self.cached.values())} rows computed once "
            f"(precompute_ref_log_probs), cached in {cache_file}")

    def _compute(self, trainer, dataset) -> np.ndarray:
        dp_rank, dp, micro = trainer.mesh.coords["dp"], trainer.layout.dp, trainer.micro
        mine = list(range(dp_rank, len(dataset), dp))
        holder = trainer.mesh.coords["tp"] == 0 and trainer.mesh.coords["cp"] == 0  # TP/CP ranks hold copies
        table = torch.zeros((len(dataset), 2), dtype=torch.float64, device=trainer.device)
        forwards = -(-(-(-len(dataset) // dp)) // micro)  # the same count on every rank (ZeRO-3 gathers)
        for b in range(forwards):
            chunk = mine[b * micro:(b + 1) * micro]
            rows = trainer._rows(dataset, chunk or [0])
            batch, shifts = trainer._batch(rows)
            values = self.live(batch, shifts, trainer).double()
            if chunk and holder:
                n = len(chunk)
                table[chunk, 0] = values[:n]
                table[chunk, 1] = values[n:]
        trainer.dist.all_reduce(table)  # one holder per row: its dp rank's TP 0 / CP 0 rank
        return table.cpu().numpy()


def cache_path(plan, run) -> Path:
    """reference-<fingerprint>.npz in the prepared data's folder: the fingerprint names the starting weights
    (model files' names, sizes and times, lora_model_dir), the precision and the attention kernel."""
    model = Path(plan.model_path)
    files = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in model.glob("*")
                   if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")) if model.is_dir() else []
    cfg = plan.config
    key = json.dumps([str(model), files, cfg.get("lora_model_dir"), run.precision.name, run.attention,
                      run.preference.method, run.preference.ld_alpha, cfg.get("sequence_len")], default=str)
    return Path(plan.prepared_path) / f"reference-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def reference_ds_config(ds_config: dict) -> dict:
    """The policy's DeepSpeed config for a model that is never stepped: no optimizer or scheduler; ZeRO-3
    kept (the copy is partitioned like the policy), stages 1-2 shard only optimizer state: stage 0."""
    config = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler")}
    zero = dict(config.get("zero_optimization") or {})
    if zero.get("stage") != 3:
        zero = {"stage": 0}
    zero.pop("offload_optimizer", None)
    config["zero_optimization"] = zero
    return config


def build_reference(plan, run, mesh, engine, attn: str, resumed: bool, log) -> Reference:
    """The run's Reference. A frozen copy is built for frozen-copy, and for precomputed when a full
    fine-tune resumes without the cache (the policy has moved from the starting weights by then)."""
    mode = run.preference.reference
    log(f"reference model: {run.preference.reference_why}")
    if mode in ("none", "adapter-disabled"):
        return Reference(mode, engine=engine)
    if mode == "precomputed" and (run.adapter is not None or not resumed):
        return Reference(mode, engine=engine)
    if mode == "precomputed" and cache_path(plan, run).exists():
        return Reference(mode, engine=engine)
    import deepspeed

    from ds_tp.train.model import load_model
    model, keep_alive = load_model(plan, run, attn)
    for param in model.parameters():
        param.requires_grad_(False)
    frozen, _, _, _ = deepspeed.initialize(model=model, config=reference_ds_config(plan.ds_config), mpu=mesh.mpu)
    frozen.eval()
    log(f"reference model built: ZeRO stage {frozen.zero_optimization_stage()}, no optimizer")
    return Reference(mode, engine=engine, frozen=frozen, keep_alive=keep_alive)
