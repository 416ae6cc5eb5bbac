"""The HF-format model at the end of training: safetensors shards + index, config, tokenizer, loadable
by AutoModelForCausalLM.from_pretrained.

Weights are gathered one module at a time (ZeRO-3 partitions and AutoTP shards alike; every rank
takes part) and rank 0 writes a shard file whenever max_shard_bytes have piled up, so rank 0 never
holds more than one shard plus one layer: a 70B export does not need 140 GB of host memory.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path

import torch

DEFAULT_SHARD_MB = 2048


class ShardWriter:
    """Rank 0's side: collect tensors, write model-XXXXX.safetensors files, then the index."""

    def __init__(self, out_dir: Path, max_bytes: int):
        self.out_dir, self.max_bytes = out_dir, max_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: list[tuple[str, list[str]]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.current[name] = tensor.detach().to("cpu").contiguous().clone()
        self.size += tensor.numel() * tensor.element_size()
        if self.size >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.current:
            return
        from safetensors.torch import save_file
        name = f"model-part-{len(self.files) + 1:05d}.safetensors"
        save_file(self.current, str(self.out_dir / name), metadata={"format": "pt"})
        self.files.append((name, list(self.current)))
        self.current, self.size = {}, 0

    def finish(self) -> None:
        self.flush()
        if len(self.files) == 1:
            os.replace(self.out_dir / self.files[0][0], self.out_dir / "model.safetensors")
            return
        weight_map, total = {}, len(self.files)
        for index, (name, keys) in enumerate(self.files, start=1):
            final = f"model-{index:05d}-of-{total:05d}.safetensors"
            os.replace(self.out_dir / name, self.out_dir / final)
            weight_map.update({k: final for k in keys})
        size = sum((self.out_dir / f).stat().st_size for f in set(weight_map.values()))
        (self.out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=1))


def export_hf(engine, mesh, plan, out_dir: Path) -> None:
    import deepspeed

    from ds_tp.train.internals import gather_tp_params, persistent_buffer_names

    zero3 = engine.zero_optimization_stage() == 3
    tp = mesh.layout.tp > 1
    max_mb = float(os.environ.get("DS_TP_EXPORT_SHARD_MB", DEFAULT_SHARD_MB))
    writer = None
    if mesh.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in list(out_dir.glob("model*.safetensors")) + list(out_dir.glob("model.safetensors.index.json")):
            stale.unlink()
        writer = ShardWriter(out_dir, int(max_mb * 2**20))
    seen: set[int] = set()  # tied weights are written once; from_pretrained re-ties them

    def visit(module, prefix: str) -> None:
        params = list(module.parameters(recurse=False))
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=0) if zero3 and params else nullcontext()
        with gather, gather_tp_params(params, module, enabled=tp and bool(params)):
            if writer is not None:
                for name, param in module.named_parameters(recurse=False):
                    key = param.ds_id if hasattr(param, "ds_id") else id(param)
                    if key not in seen:
                        seen.add(key)
                        writer.add(prefix + name, param.data)
                keep = persistent_buffer_names(module)
                for name, buf in module.named_buffers(recurse=False):
                    if name in keep:
                        writer.add(prefix + name, buf)
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}.")

    with torch.no_grad():
        visit(engine.module, "")
    if writer is None:
        return
    writer.finish()
    engine.module.config.save_pretrained(str(out_dir))
    if getattr(engine.module, "generation_config", None) is not None:
        engine.module.generation_config.save_pretrained(str(out_dir))
    from ds_tp.model_config import load_tokenizer
    load_tokenizer(plan.model_path, plan.config).save_pretrained(str(out_dir))
