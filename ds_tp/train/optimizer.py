"""The optimizer DeepSpeed cannot build from its JSON: bitsandbytes' AdamW variants, built here from
translators.deepspeed.client_optimizer (the one decision) and handed to deepspeed.initialize.

Under ZeRO, DeepSpeed swaps each parameter group's tensors for its own flat fp32 partitions before the
first step, so bitsandbytes quantizes the moments of those flat buffers blockwise. HF Trainer also keeps
the embeddings' moments in 32 bits (a per-module override); on flat partitions no module is left to
override, so every moment is 8-bit here.
"""
from __future__ import annotations

from ds_tp.translators.deepspeed import client_optimizer


def build_optimizer(cfg: dict, params: list):
    """The client optimizer for deepspeed.initialize, or None when the JSON's optimizer block is used."""
    choice = client_optimizer(cfg)
    if choice is None:
        return None
    import bitsandbytes.optim as bnb_optim
    name, kwargs = choice
    return getattr(bnb_optim, name)(params, **kwargs)
