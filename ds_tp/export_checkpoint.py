"""`ds-tp export CHECKPOINT OUT`: a HF model folder from any ds-tp checkpoint (the zero_to_fp32 job),
so a run that crashed before its final export still yields a usable model.

Memory (the heap) is bounded by one layer plus one output shard, never by the model: nothing is built
whole. The model exists only on the meta device (names, shapes, dtypes; no weights). DeepSpeed's files
are opened with torch.load(mmap=True): what is read of them is page cache, which counts in the RSS but
which the kernel drops under pressure. Then, one layer at a time, each weight is rebuilt on its own:
gathered from the ZeRO partitions of each TP rank (zero_to_fp32's reconstruction: the fp32 master copy
where the optimizer holds one, else the module's own tensor), its TP shards joined (a weight whose
shape on a TP rank differs from the model's along one dimension is concatenated along it in TP-rank
order: AutoTP splits q/k/v/gate/up and lm_head by rows, o/down by columns, possibly unevenly; a fused
gate_up_proj (phi3, glm4) is split sub-block by sub-block, so it is joined gate slices first, then up
slices (family_rules.tp_sub_blocks); the rest is replicated and taken from TP rank 0), cast to the dtype save_pretrained writes (the model's, fp32),
and handed to the training export's ShardWriter, which writes a safetensors file (plus the index)
whenever DS_TP_EXPORT_SHARD_MB (default 2048) have piled up. As save_pretrained does, tied weights are
written once and transformers' weight conversions are reverted (per layer: they join or split the
tensors of one module).

An adapter run's checkpoint holds the trainable weights only; its adapter folder (gathered across ZeRO
partitions and TP shards when it was saved) is what export writes: PeftModel.from_pretrained loads it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ds_tp.errors import UserError
from ds_tp.progress import task
from ds_tp.runfiles import read_state


def export_checkpoint(checkpoint: Path, out: Path) -> None:
    state = read_state(checkpoint)
    if (state.get("run") or {}).get("adapter"):
        export_adapter(checkpoint, out)
        return
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    from ds_tp.model_config import load_model_config, load_tokenizer
    from ds_tp.train.export import DEFAULT_SHARD_MB, ShardWriter

    tp_ranks = sorted({int(m.group(1)) for f in checkpoint.iterdir()
                       if (m := re.search(r"mp_rank_(\d+)_model_states\.pt$", f.name))})
    if not tp_ranks:
        raise UserError(f"{checkpoint}: no DeepSpeed model states (*mp_rank_XX_model_states.pt) in it")
    ranks = [tp_rank_weights(checkpoint, r) for r in tp_ranks]
    cfg = state.get("config", {})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_model_config(state["model_path"], cfg),
                                                 trust_remote_code=bool(cfg.get("trust_remote_code")))
        rows = ((state.get("run") or {}).get("model") or {}).get("vocab")
        if rows and model.get_input_embeddings().num_embeddings != rows:  # the run resized its embeddings
            model.resize_token_embeddings(rows, mean_resizing=False)
    expected = model.state_dict()
    keep = remove_tied_weights_from_state_dict(dict(expected), model)  # what save_pretrained writes
    names = set(ranks[0]).intersection(*ranks[1:])  # on every TP rank
    missing = [k for k in keep if k not in names and "rotary" not in k]
    unexpected = sorted({k for r in ranks for k in r} - set(expected))
    if unexpected or missing:
        raise UserError(f"{checkpoint}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")

    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("model*.safetensors"), *out.glob("model.safetensors.index.json")]:
        stale.unlink()
    writer = ShardWriter(out, int(float(os.environ.get("DS_TP_EXPORT_SHARD_MB", DEFAULT_SHARD_MB)) * 2**20))
    from ds_tp.translators.family_rules import tp_sub_blocks
    layers = by_layer([k for k in keep if k in names])
    with task(f"exporting {checkpoint.name}", len(layers), min_items=2) as advance:
        for layer in layers:
            weights = {k: join_tp_shards(k, [r[k] for r in ranks], expected[k], checkpoint,
                                         tp_sub_blocks(model.config.model_type, k)) for k in layer}
            for name, tensor in revert_weight_conversion(model, weights).items():
                writer.add(name, tensor)
            del weights
            advance(1)
    writer.finish()
    model.config.dtype = str(model.dtype).split(".")[1]  # as save_pretrained
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(str(out))
    if model.can_generate() and model.generation_config is not None:
        model.generation_config.save_pretrained(str(out))
    load_tokenizer(state["model_path"], cfg).save_pretrained(str(out))


def tp_rank_weights(checkpoint: Path, tp_rank: int, key: str | None = None,
                    state: dict | None = None) -> dict[str, tuple[list, tuple]]:
    """One TP rank's full (un-ZeRO-partitioned) weights as name -> (views, shape), copied by materialise():
    the views are slices of mmapped tensors whose concatenation starts with the weight's elements.
    fp32 master copies where the ZeRO optimizer holds them (zero_to_fp32's reconstruction, DeepSpeed
    0.19.8), else the module's own tensors (ZeRO stage 0; frozen weights under ZeRO-1/2).
    key (exp_avg, exp_avg_sq): that optimizer moment instead, for the trainable weights, laid out as the
    weights are (stage 0: the torch optimizer's state, named by ds-tp's state["optimizer_params"])."""
    import torch

    def dp_rank(path: Path) -> int:
        return int(m.group(1)) if (m := re.search(r"zero_pp_rank_(\d+)_", path.name)) else 0

    def load(path: Path):
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)

    tag = f"mp_rank_{tp_rank:02d}_"
    models = [load(f) for f in sorted(checkpoint.glob(f"*{tag}model_states.pt"), key=dp_rank)]
    optim = [load(f)["optimizer_state_dict"]
             for f in sorted(checkpoint.glob(f"*zero_pp_rank_*_{tag}optim_states.pt"), key=dp_rank)]
    first = models[0]
    if not optim or "zero_stage" not in optim[0]:  # stage 0 (or DeepSpeed's BF16_Optimizer)
        if key is None:
            return {k: ([v], tuple(v.shape)) for k, v in first["module"].items()}
        return _stage0_moments(checkpoint, first, key, state or {})
    stage, world = int(optim[0]["zero_stage"]), optim[0]["partition_count"]
    world = max(world) if isinstance(world, list) else world
    if world != len(optim):
        raise UserError(f"{checkpoint}: {len(optim)} ZeRO partitions of TP rank {tp_rank}, saved by {world} ranks")
    weights: dict[str, tuple[list, tuple]] = {k: ([first["module"][k]], tuple(first["module"][k].shape))
                                              for k in first["buffer_names"]}
    if stage == 3:
        flats = [o["fp32_flat_groups"] if key is None else
                 [o["optimizer_state_dict"]["state"][g][key] for g in range(len(o["fp32_flat_groups"]))]
                 for o in optim]
        offset = 0
        for name, shape in ((k, s) for group in first["param_shapes"] for k, s in group.items()):
            part = -(-shape.numel() // world)  # each rank's share, padded
            weights[name] = ([v for groups in flats for v in span(groups, offset, part)], tuple(shape))
            offset += part
        if offset != sum(g.numel() for g in flats[0]):
            raise UserError(f"{checkpoint}: TP rank {tp_rank}'s ZeRO-3 partitions do not hold its parameters")
        for name, shape in (first.get("frozen_param_shapes") or {}).items():
            weights[name] = ([m["frozen_param_fragments"][name] for m in models], tuple(shape))
    else:
        paddings = optim[0].get("param_alignment_paddings")
        for g, shapes in enumerate(first["param_shapes"]):
            parts = [o["single_partition_of_fp32_groups"][g] if key is None else o["base_optimizer_state"][g][key]
                     for o in optim]
            offset = 0
            for i, (name, shape) in enumerate(shapes.items()):
                weights[name] = (span(parts, offset, shape.numel()), tuple(shape))
                offset += shape.numel() + (paddings[g][i] if paddings else 0)
        if key is None:
            for name, value in first["module"].items():  # frozen weights: whole in the module under ZeRO-1/2
                weights.setdefault(name, ([value], tuple(value.shape)))
    for alias, source in (first.get("shared_params") or {}).items():
        if source in weights:
            weights[alias] = weights[source]
    return weights


def _stage0_moments(checkpoint: Path, first: dict, key: str, state: dict) -> dict[str, tuple[list, tuple]]:
    """Stage 0: the torch optimizer's per-parameter state, in its parameter order (ds-tp's state names it)."""
    groups, saved = state.get("optimizer_params"), first.get("optimizer") or {}
    if not groups or "param_groups" not in saved:
        raise UserError(f"{checkpoint}: no optimizer state by parameter name (saved before ds-tp recorded "
                        "optimizer_params, or by DeepSpeed's BF16 optimizer): it resumes on its own layout only")
    out = {}
    for names, group in zip(groups, saved["param_groups"]):
        for name, index in zip(names, group["params"]):
            value = saved["state"][index][key]
            out[name] = ([value], tuple(value.shape))
    return out


def span(parts: list, start: int, count: int) -> list:
    """Views of elements [start, start + count) of the concatenation of the 1-D tensors `parts`."""
    views = []
    for part in parts:
        if count <= 0:
            break
        if start >= part.numel():
            start -= part.numel()
            continue
        views.append(part[start:start + count])
        count, start = count - views[-1].numel(), 0
    return views


def materialise(weight: tuple[list, tuple]):
    """The tensor of a (views, shape) weight: a view where it lies whole in one file, else a copy."""
    import math

    import torch

    views, shape = weight
    flat = views[0].reshape(-1) if len(views) == 1 else torch.cat([v.reshape(-1) for v in views])
    return flat[:math.prod(shape)].view(shape)


def by_layer(names: list[str]) -> list[list[str]]:
    """Names grouped up to their first numbered component (model.layers.3): the unit transformers'
    weight conversions are reverted on (they join or split the tensors of one module)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(m.group(1) if (m := re.match(r"(.*?\.\d+)\.", name)) else name, []).append(name)
    return list(groups.values())


def join_tp_shards(name: str, shards: list[tuple[list, tuple]], want, checkpoint: Path, blocks: int = 1):
    """One weight from its TP ranks' (views, shape), in the dtype of `want` (its meta tensor in the model).
    blocks > 1: each shard holds that many equal sub-block slices along the split dimension (a fused weight
    AutoTP split one sub-block at a time): sub-block j is rank 0's j-th slice, rank 1's j-th slice, ..."""

    shape = shards[0][1]
    if shape == tuple(want.shape):
        return materialise(shards[0]).to(want.dtype)
    dims = [d for d in range(len(shape)) if shape[d] != want.shape[d]] if len(shape) == want.dim() else []
    d = dims[0] if len(dims) == 1 else 0
    if (len(dims) != 1 or sum(s[1][d] for s in shards) != want.shape[d]
            or any(s[1][:d] + s[1][d + 1:] != shape[:d] + shape[d + 1:] for s in shards)):
        raise UserError(f"{checkpoint}: {name} is {list(shape)} on TP rank 0 and {list(want.shape)} in the "
                        f"model: not a split along one dimension over {len(shards)} TP ranks")
    return cat_tp_shards([materialise(s) for s in shards], d, blocks, name, checkpoint).to(want.dtype)


def cat_tp_shards(parts: list, d: int, blocks: int, name: str, checkpoint: Path | None):
    """The TP ranks' shards of one weight joined along dimension d, in TP-rank order; blocks > 1: sub-block
    by sub-block (each shard holds its slice of every sub-block, in order; family_rules.tp_sub_blocks)."""
    import torch

    if blocks > 1:
        if any(p.shape[d] % blocks for p in parts):
            raise UserError(f"{checkpoint}: {name}'s TP shards ({[p.shape[d] for p in parts]} along dimension {d}) do "
                            f"not hold {blocks} equal sub-blocks each")
        slices = [p.chunk(blocks, dim=d) for p in parts]
        parts = [piece[j] for j in range(blocks) for piece in slices]
    return torch.cat(parts, dim=d)


def export_adapter(checkpoint: Path, out: Path) -> None:
    import shutil

    from ds_tp.runfiles import ADAPTER_FILES

    if not all((checkpoint / name).is_file() for name in ADAPTER_FILES):
        raise UserError(f"{checkpoint}: an adapter run's checkpoint without its adapter folder ({', '.join(ADAPTER_FILES)})")
    out.mkdir(parents=True, exist_ok=True)
    for path in checkpoint.iterdir():
        if path.name in ADAPTER_FILES or path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(path, out / path.name)
