"""sdpa one document at a time: packed rows without a T x T mask, with and without Ulysses.

transformers' sdpa path turns packed position_ids into a block-diagonal (B, 1, T, T) mask, and a mask keeps
sdpa off its fused kernels: the math kernel then holds T x T attention weights per head, so memory grows with
T^2. DeepSpeed 0.19.8's Ulysses wrapper drops the mask for sdpa altogether (it relies on position_ids, which
only flash-attention's varlen path reads), so packed documents would attend to each other there.

This attention function (registered through transformers' public AttentionInterface, with a mask function
that builds no mask) finds the documents from position_ids (a document starts where a position does not
continue the one before, as transformers' find_packed_sequence_indices) and calls sdpa once per document with
is_causal and no mask: the fused kernels (flash on CPU and GPU) keep memory linear in the document's length.
Padding is on the right (batches.collate) and continues the last document, so it is never attended to by a
real token. A sliding-window layer (Mistral, Gemma's local layers) gets its band as an explicit mask, per
document, only when the document is longer than the window.

The spans are found once per forward, not once per layer: every layer receives the same position_ids tensor,
and finding them reads values back to the host (nonzero, tolist), on a GPU a sync that would stop the host
from queueing the next layers' kernels ahead of the device.
"""
from __future__ import annotations

import torch

DOCUMENT_SDPA = "ds_tp_document_sdpa"


def document_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the [start, end) of each document."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    length = position_ids.shape[1]
    out = []
    for row in starts:
        edges = [*row.nonzero().flatten().tolist(), length]
        out.append(list(zip(edges[:-1], edges[1:])))
    return out


_SEEN: tuple = (None, -1, None)  # (position_ids, its version, spans): the forward now running


def spans_of(position_ids: torch.Tensor, rows: int) -> list[list[tuple[int, int]]]:
    """document_spans of this forward's position_ids, found at its first layer. The tensor itself is held
    (not its address, which a later batch could reuse), so a new batch is never given old spans."""
    global _SEEN
    held, version, spans = _SEEN
    if held is not position_ids or version != position_ids._version or len(spans) != rows:
        spans = document_spans(position_ids.expand(rows, -1))
        _SEEN = (position_ids, position_ids._version, spans)
    return spans


def _band(length: int, window: int, device) -> torch.Tensor:
    i = torch.arange(length, device=device)
    return ((i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window))[None, None]


def document_sdpa(module, query, key, value, attention_mask, **kwargs):
    """(B, H, T, D) query/key/value -> (B, T, H, D) output, as transformers' attention functions return."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    kwargs.pop("is_causal", None)
    if position_ids is None or position_ids.shape[-1] != query.shape[2] or attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, position_ids=position_ids, **kwargs)
    window = kwargs.pop("sliding_window", None) or getattr(module, "sliding_window", None)  # Mistral passes it
    spans = spans_of(position_ids, query.shape[0])
    if all(len(row) == 1 for row in spans) and not window:
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)
    rows = []
    for b, row in enumerate(spans):
        parts = []
        for start, end in row:
            q, k, v = (t[b:b + 1, :, start:end] for t in (query, key, value))
            mask = _band(end - start, window, q.device) if window and end - start > window else None
            parts.append(sdpa_attention_forward(module, q, k, v, mask, is_causal=mask is None, **kwargs)[0])
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0), None


def no_mask(*args, **kwargs):
    """The mask function of DOCUMENT_SDPA: none is built (document_sdpa reads position_ids instead)."""
    return None


def register_document_sdpa() -> str:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(DOCUMENT_SDPA, document_sdpa)
    AttentionMaskInterface.register(DOCUMENT_SDPA, no_mask)
    return DOCUMENT_SDPA
