"""Resume a checkpoint on another layout: weights, Adam moments and step counts carried across any change of
dp_shard, dp_replicate, tp, cp or world size (the universal-checkpoint job, AutoTP-aware).

Reading (every rank, files memory-mapped): each saved TP rank's tensors are rebuilt whole from its ZeRO
partitions as `ds-tp export` does (export_checkpoint.tp_rank_weights: zero_to_fp32's reconstruction, for the
fp32 master weights and, by the same offsets, for each optimizer moment), then joined across the saved TP
ranks (the split dimension is the one whose size differs from the model's). Writing (this rank): each
parameter's whole tensor is cut to this rank's TP shard (offsets from every TP rank's shard sizes, gathered
once) and handed to DeepSpeed's own setters (deepspeed.utils.safe_set_full_fp32_param /
safe_set_full_optimizer_state, which place the ZeRO partition), or set on the parameter and the torch
optimizer's state at stage 0. The lr scheduler's state and DeepSpeed's step counters come from the saved model
states; ds-tp's data position is its step (the global batch is kept, see launch/resume.py).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ds_tp.errors import UserError

MOMENTS = ("exp_avg", "exp_avg_sq")


def _load(path: Path):
    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)


def _tp_ranks(checkpoint: Path) -> list[int]:
    ranks = sorted({int(m.group(1)) for f in checkpoint.iterdir()
                    if (m := re.search(r"mp_rank_(\d+)_model_states\.pt$", f.name))})
    if not ranks:
        raise UserError(f"{checkpoint}: no DeepSpeed model states (*mp_rank_XX_model_states.pt) in it")
    return ranks


class SavedTensors:
    """A checkpoint's trainable tensors, each rebuilt whole (all TP ranks joined into the model's shape) only when
    asked for: memory holds one parameter's weight and moments at a time, the files stay memory-mapped."""

    def __init__(self, checkpoint: Path, shapes: dict[str, tuple], state: dict):
        from ds_tp.export_checkpoint import tp_rank_weights

        self.checkpoint, self.shapes = checkpoint, shapes
        tp_ranks = _tp_ranks(checkpoint)
        self.per_rank = {None: [tp_rank_weights(checkpoint, r) for r in tp_ranks],
                         **{key: [tp_rank_weights(checkpoint, r, key, state) for r in tp_ranks] for key in MOMENTS}}
        missing = [n for n in shapes if any(n not in ranks[0] for ranks in self.per_rank.values())]
        if missing:
            raise UserError(f"{checkpoint}: no saved weights or optimizer state for {missing[:3]}"
                            + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""))
        self.step = saved_step(checkpoint, tp_ranks[0])

    def whole(self, name: str, key: str | None = None, blocks: int = 1) -> torch.Tensor:
        """The fp32 weight (key None) or an Adam moment of one parameter."""
        from ds_tp.export_checkpoint import materialise

        parts = [materialise(r[name]).float() for r in self.per_rank[key]]
        return _join(parts, tuple(self.shapes[name]), name, self.checkpoint, blocks)


def _join(parts: list[torch.Tensor], shape: tuple, name: str, checkpoint: Path, blocks: int = 1) -> torch.Tensor:
    """One tensor of the model's `shape` from its saved TP shards: replicated (rank 0's is whole) or split along
    the one dimension where a shard is smaller (AutoTP splits rows or columns, possibly unevenly; a fused weight
    of `blocks` sub-blocks one sub-block at a time)."""
    from ds_tp.export_checkpoint import cat_tp_shards

    if tuple(parts[0].shape) == shape:
        return parts[0]
    dims = [d for d in range(len(shape)) if parts[0].shape[d] != shape[d]] if parts[0].dim() == len(shape) else []
    if len(dims) != 1 or sum(p.shape[dims[0]] for p in parts) != shape[dims[0]]:
        raise UserError(f"{checkpoint}: {name}'s saved TP shards {[list(p.shape) for p in parts]} do not make "
                        f"its shape {list(shape)}")
    return cat_tp_shards(parts, dims[0], blocks, name, checkpoint)


def saved_step(checkpoint: Path, tp_rank: int) -> float:
    """Adam's step count as saved (skipped steps, such as a non-finite one, did not count)."""
    tag = f"mp_rank_{tp_rank:02d}_"
    optim = sorted(checkpoint.glob(f"*zero_pp_rank_*_{tag}optim_states.pt"))
    if optim:
        sd = _load(optim[0])["optimizer_state_dict"]
        inner = sd.get("optimizer_state_dict") or {}
        groups = list((inner.get("state") or {}).values()) or list(sd.get("base_optimizer_state") or [])
    else:
        groups = list(((_load(next(checkpoint.glob(f"*{tag}model_states.pt"))).get("optimizer") or {})
                       .get("state") or {}).values())
    steps = [float(g["step"]) for g in groups if isinstance(g, dict) and "step" in g]
    if not steps:
        raise UserError(f"{checkpoint}: no optimizer step count in it")
    return steps[0]


def shard_for(whole: torch.Tensor, local_shape: tuple, tp_shapes: list, me: int, name: str,
              blocks: int = 1) -> torch.Tensor:
    """This TP rank's piece of a whole tensor: along the dimension where the local shape is smaller, starting
    after the pieces of the TP ranks before it (tp_shapes: every TP rank's local shape, in TP order); with
    blocks > 1 (a fused weight split one sub-block at a time) that piece of each sub-block, in order."""
    if tuple(whole.shape) == tuple(local_shape):
        return whole
    dims = [d for d in range(whole.dim()) if whole.shape[d] != local_shape[d]]
    if len(dims) != 1 or any(x % blocks for x in (whole.shape[dims[0]], local_shape[dims[0]])):
        raise UserError(f"{name}: saved as {list(whole.shape)}, this rank holds {list(local_shape)}: not a TP split")
    d = dims[0]
    start = sum(shape[d] for shape in tp_shapes[:me])
    return torch.cat([sub.narrow(d, start // blocks, local_shape[d] // blocks) for sub in whole.chunk(blocks, dim=d)],
                     dim=d)


def _tp_shapes(mesh, params: dict) -> dict[str, list]:
    """Per parameter, every TP rank's local shape in TP order (AutoTP may split unevenly)."""
    mine = {n: list(getattr(p, "ds_shape", p.shape)) for n, p in params.items()}
    if mesh.layout.tp == 1:
        return {n: [s] for n, s in mine.items()}
    import torch.distributed as tdist

    gathered: list = [None] * mesh.world
    tdist.all_gather_object(gathered, mine, group=mesh.control_group)
    group = next(g for g in mesh.layout.groups("tp") if mesh.rank in g)
    every = [gathered[r] for r in sorted(group, key=lambda r: mesh.layout.coords(r)["tp"])]
    return {n: [other[n] for other in every] for n in mine}


def load_resharded(engine, mesh, checkpoint: Path, state: dict, global_shapes: dict, log) -> None:
    """Set this rank's weights, Adam moments and step count, the lr scheduler and DeepSpeed's counters from a
    checkpoint saved on another layout. global_shapes: the parameters' shapes before TP split them."""
    params = {n: p for n, p in engine.module.named_parameters() if p.requires_grad}
    saved = SavedTensors(checkpoint, {n: global_shapes[n] for n in params}, state)
    tp_shapes, me, step = _tp_shapes(mesh, params), mesh.coords["tp"], saved.step
    zero = engine.zero_optimization_stage()
    if zero:
        _ensure_adam_state(engine)
    from ds_tp.translators.family_rules import tp_sub_blocks
    model_type = getattr(getattr(engine.module, "config", None), "model_type", "")
    for name, param in params.items():
        local = tuple(getattr(param, "ds_shape", param.shape))
        blocks = tp_sub_blocks(model_type, name)  # phi3/glm4's gate_up: gate slices, then up slices, on each rank
        value = shard_for(saved.whole(name, None, blocks), local, tp_shapes[name], me, name, blocks)
        pieces = {k: shard_for(saved.whole(name, k, blocks), local, tp_shapes[name], me, name, blocks) for k in MOMENTS}
        if zero == 0:
            _set_stage0(engine, param, value, pieces, step)
        else:
            _set_zero(param, value, pieces, zero)
    if zero:
        _set_zero_steps(engine, step)
    model_states = _load(next(checkpoint.glob(f"*mp_rank_{0:02d}_model_states.pt")))
    if engine.lr_scheduler is not None and model_states.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(model_states["lr_scheduler"])
        last = engine.lr_scheduler.get_last_lr() if hasattr(engine.lr_scheduler, "get_last_lr") else None
        for group, lr in zip(engine.optimizer.param_groups, last or []):  # the rate the next step runs at (a
            group["lr"] = lr  # scheduler's state alone sets it only at its next step)
    for counter in ("global_steps", "global_samples", "skipped_steps"):
        if counter in model_states:
            setattr(engine, counter, model_states[counter])
    log(f"resumed {len(params)} trainable tensors, their Adam moments (step {int(step)}) and the lr schedule "
        f"from a checkpoint saved with layout {state.get('layout')}")


def _set_stage0(engine, param, value, moments: dict, step: float) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    with torch.no_grad():
        param.data.copy_(value.to(param.dtype))
    if hasattr(param, "_hp_mapping"):  # DeepSpeed's BF16 optimizer at stage 0: an fp32 copy with the moments
        safe_set_full_fp32_param(param, value)
        for key, moment in moments.items():
            safe_set_full_optimizer_state(param, moment, key)
        return
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    optimizer.state[param] = {"step": _step_tensor(optimizer, param, step),
                              **{k: m.to(param.device, param.dtype).clone() for k, m in moments.items()}}


def _step_tensor(optimizer, param, step: float) -> torch.Tensor:
    """Adam's step as torch keeps it: on the parameter's device for fused/capturable groups, else on the CPU."""
    group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), {})
    on_device = group.get("fused") or group.get("capturable")
    return torch.tensor(float(step), dtype=torch.float32, device=param.device if on_device else "cpu")


def _set_zero(param, value, moments: dict, stage: int) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if stage == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            param.data.copy_(value.to(param.dtype))  # rank 0's copy is partitioned to every rank on exit
    else:
        with torch.no_grad():
            param.data.copy_(value.to(param.dtype))
    safe_set_full_fp32_param(param, value.to(torch.float32))
    for key, moment in moments.items():
        safe_set_full_optimizer_state(param, moment.to(torch.float32), key)


def _ensure_adam_state(engine) -> None:
    """ZeRO's inner torch optimizer creates its state at the first step: create it (zeros) so that DeepSpeed's
    setters have moments to write into."""
    zero, inner = engine.optimizer, engine.optimizer.optimizer
    flats = [*getattr(zero, "fp32_partitioned_groups_flat", []), *getattr(zero, "single_partition_of_fp32_groups", [])]
    for flat in flats or [p for group in inner.param_groups for p in group["params"]]:
        state = inner.state[flat]
        if MOMENTS[0] not in state:
            state.update({"step": _step_tensor(inner, flat, 0.0),
                          **{k: torch.zeros_like(flat, memory_format=torch.preserve_format) for k in MOMENTS}})


def _set_zero_steps(engine, step: float) -> None:
    inner = getattr(engine.optimizer, "optimizer", None)
    for group_state in (list(inner.state.values()) if inner is not None else []):
        if "step" in group_state:
            value = group_state["step"]
            group_state["step"] = torch.full_like(value, step) if torch.is_tensor(value) else step
