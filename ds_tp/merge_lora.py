"""`ds-tp merge-lora CONFIG [--lora-model-dir DIR]`: the base model with a LoRA adapter folded into its
weights, written as a HF model folder (Axolotl's command; output in output_dir/merged).

Streamed: the base's safetensors are read one tensor at a time and the merged tensors written in shards
(train/export.py's ShardWriter), so merging a 70B model needs one tensor and the adapter in memory, not
the model. Each adapted weight becomes W + scale * B @ A (transposed for fan_in_fan_out; per-module rank
and alpha from rank_pattern/alpha_pattern; DoRA rescales each output row to its learned magnitude),
computed in fp32 and stored in the base tensor's dtype, as peft's merge_and_unload does. A module in
modules_to_save takes the adapter's trained copy. A 4-bit (QLoRA) run merges into the full-precision
base it was quantized from.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from ds_tp.errors import Problem, UserError

PREFIX = "base_model.model."


def adapter_files(folder: Path) -> tuple[dict, dict]:
    """(adapter_config.json, the adapter's tensors) of a saved adapter folder."""
    from safetensors.torch import load_file

    config, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config.is_file() or not weights.is_file():
        raise UserError(Problem(f"{folder}: not an adapter folder (adapter_config.json and adapter_model.safetensors)",
                                key="lora_model_dir", hint="point --lora-model-dir at a finished run or a checkpoint"))
    return json.loads(config.read_text(encoding="utf-8")), load_file(str(weights))


def base_tensor_files(model_path: str) -> list[Path]:
    folder = Path(model_path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise UserError(Problem(f"{folder}: no safetensors weights to merge into (model.safetensors or its index)",
                            key="base_model"))


def _pattern_value(patterns: dict | None, module: str, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def scale_of(config: dict, module: str) -> float:
    r = _pattern_value(config.get("rank_pattern"), module, config["r"])
    alpha = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
    return alpha / (math.sqrt(r) if config.get("use_rslora") else r)


def merged_tensor(name: str, tensor, config: dict, adapter: dict):
    """The base tensor `name` with the adapter applied (or the tensor itself)."""
    import torch

    module = name.removesuffix(".weight")
    key = PREFIX + module
    if name.endswith(".weight") and key + ".weight" in adapter:  # modules_to_save: the trained copy
        return adapter[key + ".weight"].to(tensor.dtype)
    a, b = adapter.get(key + ".lora_A.weight"), adapter.get(key + ".lora_B.weight")
    embedding = False
    if a is None:
        a, b = adapter.get(key + ".lora_embedding_A"), adapter.get(key + ".lora_embedding_B")
        embedding = a is not None
    if a is None or not name.endswith(".weight"):
        return tensor
    delta = (b.float() @ a.float()) * scale_of(config, module)
    if embedding or config.get("fan_in_fan_out"):
        delta = delta.T
    weight = tensor.float() + delta
    magnitude = adapter.get(key + ".lora_magnitude_vector")
    if magnitude is not None:  # DoRA: each output row rescaled to its learned norm
        weight = (magnitude.float() / torch.linalg.norm(weight, dim=1)).view(-1, 1) * weight
    return weight.to(tensor.dtype)


def merge_lora(model_path: str, adapter_dir: Path, out_dir: Path, tokenizer=None, shard_mb: float = 2048) -> int:
    """Write the merged model to out_dir; returns how many weights the adapter changed."""
    from safetensors import safe_open

    from ds_tp.train.export import ShardWriter

    config, adapter = adapter_files(adapter_dir)
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(Problem(f"{adapter_dir}: a {config.get('peft_type')} adapter, not LoRA", key="lora_model_dir"))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    writer = ShardWriter(out_dir, int(shard_mb * 2**20))
    changed, used, rows = 0, set(), None
    for path in base_tensor_files(model_path):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                merged = merged_tensor(name, tensor, config, adapter)
                if merged is not tensor:
                    changed += 1
                    used.add(PREFIX + name.removesuffix(".weight"))
                    if merged.shape != tensor.shape:  # the run resized the embeddings (tokens were added)
                        rows = merged.shape[0]
                writer.add(name, merged)
    writer.finish()
    adapted = {k.rsplit(".lora_", 1)[0] for k in adapter if ".lora_" in k}
    missing = sorted(adapted - used)
    if missing:
        raise UserError(Problem(f"{adapter_dir}: the adapter's {missing[0].removeprefix(PREFIX)} is not a weight of "
                                f"{model_path}", key="lora_model_dir", hint="merge into the base_model it was trained on"))
    for extra in ("config.json", "generation_config.json"):
        if (Path(model_path) / extra).is_file():
            shutil.copy(Path(model_path) / extra, out_dir / extra)
    if rows is not None:
        model_config = json.loads((out_dir / "config.json").read_text())
        model_config["vocab_size"] = rows
        (out_dir / "config.json").write_text(json.dumps(model_config, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return changed
