"""TP and CP together: one mesh in which TP groups and Ulysses SP groups are orthogonal rank sets.

DeepSpeed 0.19.8 does not compose them: AutoTP builds a (dp, tp) mesh and the engine then asks
that mesh for a "sequence_parallel" dimension it does not have, while Ulysses builds SP groups of
consecutive ranks, which are exactly the TP groups. ds-tp builds the groups from its Layout (tp
innermost, then cp) and hands the same groups to both pieces before either creates its own:
- deepspeed.utils.groups: the TP globals AutoTP checks first (it skips its own mesh when they are
  set) and `mesh_device`, an object answering get_group(mesh_dim) for the three dimensions;
- Ulysses' parallel_state_sp: its SP and sequence-data-parallel groups.
ZeRO partitions and reduces gradients over "data_parallel" = every rank with the same TP rank
(dp x cp), which is what Ulysses needs (each CP rank holds gradients of its sequence shard).
"""
from __future__ import annotations

from ds_tp.translators.layout import Layout
from ds_tp.translators.model_shape import ModelShape


class OrthogonalMesh:
    """Duck-types torch's DeviceMesh.get_group for DeepSpeed's groups module."""

    def __init__(self, groups: dict):
        self.groups = groups

    def get_group(self, mesh_dim: str):
        return self.groups[mesh_dim]


def _my_group(rank_sets: list[list[int]], rank: int):
    import deepspeed.comm as dist
    mine = None
    for ranks in rank_sets:  # every rank must create every group, in the same order
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    return mine


def install_tp_cp_groups(layout: Layout, rank: int):
    """Create the groups and install them in DeepSpeed's AutoTP and Ulysses state. Returns the SP group."""
    from ds_tp.train.internals import install_parallel_groups

    tp_group = _my_group(layout.groups("tp"), rank)
    sp_group = _my_group(layout.groups("cp"), rank)
    by_tp_rank: dict[int, list[int]] = {}
    for r in range(layout.world):
        by_tp_rank.setdefault(layout.coords(r)["tp"], []).append(r)
    seq_dp_group = _my_group(sorted(by_tp_rank.values()), rank)
    install_parallel_groups(tp_group, sp_group, seq_dp_group, OrthogonalMesh(
        {"tensor_parallel": tp_group, "sequence_parallel": sp_group, "data_parallel": seq_dp_group}))
    return sp_group


def per_tp_rank_config(model_path: str, cfg: dict, shape: ModelShape, tp: int, attn: str):
    """What Ulysses should size its all-to-all by: the heads one TP rank holds after AutoTP's split."""
    from ds_tp.model_config import load_model_config
    from ds_tp.train.internals import set_attn_implementation

    config = load_model_config(model_path, cfg)
    text = config.get_text_config()
    text.head_dim = shape.head_dim
    text.num_attention_heads, text.num_key_value_heads = shape.per_tp_rank_heads(tp)
    set_attn_implementation(config, attn)

    class LoadedModelShim:  # register_with_transformers accepts "a model" (anything with .config)
        pass

    LoadedModelShim.config = config
    return LoadedModelShim
