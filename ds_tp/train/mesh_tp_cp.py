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
    from deepspeed.runtime.sequence_parallel import parallel_state_sp
    from deepspeed.utils import groups

    tp_group = _my_group(layout.groups("tp"), rank)
    sp_group = _my_group(layout.groups("cp"), rank)
    by_tp_rank: dict[int, list[int]] = {}
    for r in range(layout.world):
        by_tp_rank.setdefault(layout.coords(r)["tp"], []).append(r)
    seq_dp_group = _my_group(sorted(by_tp_rank.values()), rank)

    groups._TENSOR_MODEL_PARALLEL_GROUP = tp_group
    groups._MODEL_PARALLEL_GROUP = tp_group
    groups._DATA_PARALLEL_GROUP = seq_dp_group
    groups.mesh_device = OrthogonalMesh({"tensor_parallel": tp_group, "sequence_parallel": sp_group,
                                         "data_parallel": seq_dp_group})
    parallel_state_sp._SEQUENCE_PARALLEL_GROUP = sp_group
    parallel_state_sp._SEQUENCE_DATA_PARALLEL_GROUP = seq_dp_group
    # register_with_transformers calls this and would assert the groups are unset: keep ours.
    parallel_state_sp.initialize_sequence_parallel = lambda sequence_parallel_size: None
    return sp_group


def per_tp_rank_config(model_path: str, tp: int, attn: str):
    """What Ulysses should size its all-to-all by: the heads one TP rank holds after AutoTP's split."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    text.head_dim = head_dim
    text.num_attention_heads //= tp
    text.num_key_value_heads = max(1, (text.num_key_value_heads or text.num_attention_heads * tp) // tp)
    config._attn_implementation = attn

    class LoadedModelShim:  # register_with_transformers accepts "a model" (anything with .config)
        pass

    LoadedModelShim.config = config
    return LoadedModelShim
