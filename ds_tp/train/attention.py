"""sdpa that keeps packed documents apart under Ulysses sequence parallelism.

DeepSpeed 0.19.8's Ulysses wrapper drops the attention mask for sdpa and relies on position_ids,
which only flash-attention's varlen path reads: with sdpa, packed documents would attend to each
other. This attention function (registered through transformers' public AttentionInterface)
rebuilds the block-diagonal causal mask from the gathered position_ids. O(T^2) memory: on GPUs
flash_attention_2 does the same from position_ids without the mask.
"""
from __future__ import annotations

import torch

PACKED_SDPA = "ds_tp_packed_sdpa"


def register_packed_sdpa() -> str:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import find_packed_sequence_indices, sdpa_mask

    def packed_sdpa(module, query, key, value, attention_mask, **kwargs):
        position_ids = kwargs.get("position_ids")
        if attention_mask is None and position_ids is not None:
            docs = find_packed_sequence_indices(position_ids)
            if docs is not None:
                length = query.shape[2]
                causal = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
                attention_mask = ((docs[:, :, None] == docs[:, None, :]) & causal)[:, None]
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    return PACKED_SDPA
