"""Checkpoints that survive a crash mid-save, on shared storage or on each node's own disk.

DeepSpeed writes into `tmp-save-<step>` (never named checkpoint-<digits>); ds-tp's state is added,
the folder renamed to `checkpoint-<step>`, then `latest` updated last. A checkpoint without
ds_tp_state.json is incomplete and never resumed from. Global rank 0 finishes first; then the first
rank of every other node finishes the folder if it is still there, which happens only when output_dir
is not shared (each node's disk holds its own ranks' files). A resume checks that every rank found
the same step before DeepSpeed reads anything.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ds_tp.runfiles import LATEST, checkpoint_dir, existing_checkpoints, read_state, tmp_save_tag, write_state


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())


def optimizer_param_names(engine) -> list[list[str]] | None:
    """The optimizer's parameters by name, group by group, where it steps the model's own tensors (stage 0):
    what a resume on another layout needs to read its state. None under ZeRO (DeepSpeed records param_shapes)."""
    names = {id(p): n for n, p in engine.module.named_parameters()}
    groups = [[names.get(id(p)) for p in g["params"]] for g in getattr(engine.optimizer, "param_groups", [])]
    return groups if groups and all(None not in g for g in groups) else None


def versions() -> dict:
    import deepspeed

    import ds_tp
    return {"ds_tp": getattr(ds_tp, "__version__", "?"), "deepspeed": deepspeed.__version__, "torch": torch.__version__}


def save_checkpoint(engine, mesh, output_dir: Path, step: int, state: dict, keep_last: int | None,
                    trainable_only: bool = False, extra=None) -> Path:
    """trainable_only (adapters): DeepSpeed leaves the frozen base out, it is reloaded from base_model.
    extra(folder), called on every rank, adds files (the adapter folder) before the rename."""
    import deepspeed.comm as dist

    tmp_tag = tmp_save_tag(step)
    final = checkpoint_dir(output_dir, step)
    if mesh.is_main and (output_dir / tmp_tag).exists():  # a save cut short before
        shutil.rmtree(output_dir / tmp_tag)
    dist.barrier()
    if mesh.local_rank == 0 and (output_dir / tmp_tag).exists():  # ... on this node's own disk
        shutil.rmtree(output_dir / tmp_tag)
    dist.barrier()
    engine.save_checkpoint(str(output_dir), tag=tmp_tag, client_state={"step": step}, save_latest=False,
                           exclude_frozen_parameters=trainable_only)
    if extra is not None:
        extra(output_dir / tmp_tag)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, output_dir / tmp_tag / f"rng_state_{mesh.rank}.pt")
    dist.barrier()
    if mesh.is_main:
        _finish(output_dir, tmp_tag, final, {**state, "step": step}, keep_last)
    dist.barrier()
    if mesh.local_rank == 0 and not mesh.is_main and (output_dir / tmp_tag).is_dir():  # this node's own disk
        _finish(output_dir, tmp_tag, final, {**state, "step": step}, keep_last)
    dist.barrier()
    return final


def _finish(output_dir: Path, tmp_tag: str, final: Path, state: dict, keep_last: int | None) -> None:
    write_state(output_dir / tmp_tag, state)
    _fsync_tree(output_dir / tmp_tag)
    if final.exists():
        shutil.rmtree(final)
    os.rename(output_dir / tmp_tag, final)
    latest_tmp = output_dir / f"{LATEST}.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, output_dir / LATEST)
    if keep_last:
        rotate(output_dir, keep_last)


def rotate(output_dir: Path, keep_last: int) -> None:
    for old in existing_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def agree_on_resume(checkpoint: Path | None, group) -> None:
    """Called by every rank before anything is loaded: each node picked its checkpoint on its own disk (or none),
    so all ranks must name the same complete checkpoint-N, else the run stops here naming what each host found.
    group: the CPU (gloo) control group, None on one rank. One small all-reduce; the names travel only on a
    disagreement."""
    if group is None:
        return
    import socket
    import zlib

    import torch.distributed as tdist
    mine: object = None
    if checkpoint is not None:
        try:
            mine = f"{checkpoint.name} (step {read_state(checkpoint)['step']})"
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable state on this node is what we report
            mine = str(exc).splitlines()[0]
    code = zlib.crc32(repr(mine).encode())
    spread = torch.tensor([code, -code], dtype=torch.int64)
    tdist.all_reduce(spread, op=tdist.ReduceOp.MAX, group=group)
    if spread[0].item() == -spread[1].item():
        return
    seen: list = [None] * tdist.get_world_size(group)
    tdist.all_gather_object(seen, (socket.gethostname(), mine), group=group)
    counts: dict = {}
    for rank, (host, found) in enumerate(seen):
        counts.setdefault((host, found or "no checkpoint"), []).append(rank)
    raise RuntimeError("the ranks do not resume from the same checkpoint: " + "; ".join(
        f"ranks {ranks} on {host}: {found}" for (host, found), ranks in counts.items())
        + ": every node must hold the same complete checkpoint")


def load_checkpoint(engine, mesh, checkpoint: Path, trainable_only: bool = False) -> dict:
    """Restore engine (weights, optimizer, scheduler) and RNG; returns ds-tp's state (step, ...).
    trainable_only: the checkpoint holds the trainable weights only (the frozen base came from base_model)."""
    path, _ = engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name,
                                     load_module_strict=not trainable_only)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {checkpoint}")
    restore_rng(checkpoint, mesh.rank)
    return read_state(checkpoint)


def restore_rng(checkpoint: Path, rank: int) -> None:
    """This rank's saved RNG states (dropout); on another layout a rank without a file of its own takes rank 0's."""
    rng_file = checkpoint / f"rng_state_{rank}.pt"
    if not rng_file.exists():
        rng_file = checkpoint / "rng_state_0.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():  # this rank's own device (a rank saves every visible one)
            device = torch.cuda.current_device()
            if device < len(rng["cuda"]):
                torch.cuda.set_rng_state(rng["cuda"][device], device)
