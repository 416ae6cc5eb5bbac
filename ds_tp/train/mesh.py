"""Process groups on each rank: torch.distributed through deepspeed, and this rank's place in the layout."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from ds_tp.translators.layout import Layout


@dataclass
class Mesh:
    rank: int
    world: int
    local_rank: int
    layout: Layout
    coords: dict
    sp_group: object = None  # torch ProcessGroup of this rank's context-parallel (Ulysses) group
    mpu: object = None  # what deepspeed.initialize gets as mpu (Ulysses), or None
    control_group: object = None  # CPU gloo group for small control messages (stop agreement), world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(layout: Layout, timeout_s: int) -> Mesh:
    import deepspeed
    import deepspeed.comm as dist
    from deepspeed.accelerator import get_accelerator

    from ds_tp.train.internals import skip_shm_comm_build
    skip_shm_comm_build()
    backend = get_accelerator().communication_backend_name()
    if backend == "ccl":
        backend = "gloo"  # oneCCL is rarely installed; gloo is what CPU ranks use here
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s), verbose=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != layout.world:
        raise RuntimeError(f"launched {world} ranks but the layout is {layout.product()}")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if get_accelerator().device_name() == "cuda":
        get_accelerator().set_device(local_rank)
    # Control messages go over gloo on the CPU, so agreeing on them never waits for the device.
    import torch.distributed as tdist
    control = tdist.new_group(backend="gloo") if world > 1 else None
    return Mesh(rank=rank, world=world, local_rank=local_rank, layout=layout, coords=layout.coords(rank),
                control_group=control)


def attach_sequence_parallel(mesh: Mesh, plan, run, attn: str, micro: int, seq_len: int) -> None:
    """Ulysses: patch transformers' attention and create the SP groups (before the model is built)."""
    if mesh.layout.cp == 1:
        return
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    from ds_tp.train.mesh_tp_cp import install_tp_cp_groups, per_tp_rank_config
    if mesh.layout.tp > 1:
        install_tp_cp_groups(mesh.layout, mesh.rank)
    # Ulysses sizes its all-to-all from the config's heads and head_dim: ds-tp's ModelShape gives both
    # (some configs leave head_dim unset, e.g. Mixtral's), per TP rank under TP x CP
    source = per_tp_rank_config(plan.model_path, plan.config, run.model, mesh.layout.tp, attn)

    mesh.mpu = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=source, core_attn_implementation=attn, sequence_parallel_size=mesh.layout.cp,
        micro_batch_size=micro, seq_length=seq_len, seq_length_is_variable=True)
    mesh.sp_group = mesh.mpu.get_sequence_parallel_group()
    expected = mesh.layout.coords(mesh.rank)["cp"]
    if mesh.mpu.get_sequence_parallel_rank() != expected:
        raise RuntimeError(f"DeepSpeed's SP rank {mesh.mpu.get_sequence_parallel_rank()} != layout cp rank {expected}")
