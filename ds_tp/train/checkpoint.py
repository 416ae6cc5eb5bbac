"""Checkpoints that survive a crash mid-save.

DeepSpeed writes into `tmp-save-<step>` (never named checkpoint-<digits>), rank 0 adds ds-tp's
state, renames it to `checkpoint-<step>`, then updates `latest` last. A checkpoint without
ds_tp_state.json is incomplete and never resumed from.
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


def save_checkpoint(engine, mesh, output_dir: Path, step: int, state: dict, keep_last: int | None,
                    trainable_only: bool = False, extra=None) -> Path:
    """trainable_only (adapters): DeepSpeed leaves the frozen base out, it is reloaded from base_model.
    extra(folder), called on every rank, adds files (the adapter folder) before the rename."""
    import deepspeed.comm as dist

    tmp_tag = tmp_save_tag(step)
    final = checkpoint_dir(output_dir, step)
    if mesh.is_main and (output_dir / tmp_tag).exists():
        shutil.rmtree(output_dir / tmp_tag)
    dist.barrier()
    engine.save_checkpoint(str(output_dir), tag=tmp_tag, client_state={"step": step}, save_latest=False,
                           exclude_frozen_parameters=trainable_only)
    if extra is not None:
        extra(output_dir / tmp_tag)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(rng, output_dir / tmp_tag / f"rng_state_{mesh.rank}.pt")
    dist.barrier()
    if mesh.is_main:
        write_state(output_dir / tmp_tag, {**state, "step": step})
        _fsync_tree(output_dir / tmp_tag)
        if final.exists():
            shutil.rmtree(final)
        os.rename(output_dir / tmp_tag, final)
        latest_tmp = output_dir / f"{LATEST}.tmp"
        latest_tmp.write_text(final.name)
        os.replace(latest_tmp, output_dir / LATEST)
        if keep_last:
            rotate(output_dir, keep_last)
    dist.barrier()
    return final


def rotate(output_dir: Path, keep_last: int) -> None:
    for old in existing_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(engine, mesh, checkpoint: Path, trainable_only: bool = False) -> dict:
    """Restore engine (weights, optimizer, scheduler) and RNG; returns ds-tp's state (step, ...).
    trainable_only: the checkpoint holds the trainable weights only (the frozen base came from base_model)."""
    path, _ = engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name,
                                     load_module_strict=not trainable_only)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {checkpoint}")
    rng_file = checkpoint / f"rng_state_{mesh.rank}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
    return read_state(checkpoint)
