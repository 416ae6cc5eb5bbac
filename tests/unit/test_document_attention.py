"""train/attention.py: sdpa one document at a time equals each document run on its own, and transformers'
masked sdpa on the packed row (logits and gradients), sliding windows included; no T x T mask is built."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from ds_tp.train.attention import document_spans, register_document_sdpa

SMALL = dict(vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
DOCS = [7, 12, 3, 9]  # a packed row of four documents, then 5 padding tokens continuing the last one's positions


def packed_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    total = sum(DOCS) + 5
    ids = torch.randint(1, 50, (2, total), generator=g)
    row = torch.cat([torch.arange(n) for n in DOCS] + [DOCS[-1] + torch.arange(5)])
    second = torch.arange(total)  # the second row: one document
    return ids, torch.stack([row, second])


def model(kind: str, attn: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "mistral":  # a sliding window shorter than two of the documents
        return MistralForCausalLM(MistralConfig(**SMALL, sliding_window=5, attn_implementation=attn)).eval()
    return LlamaForCausalLM(LlamaConfig(**SMALL, attn_implementation=attn)).eval()


def test_document_spans():
    _, pos = packed_batch()
    assert document_spans(pos) == [[(0, 7), (7, 19), (19, 22), (22, 36)], [(0, 36)]]


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_each_document_attends_only_to_itself(kind):
    name = register_document_sdpa()
    ids, pos = packed_batch()
    ours = model(kind, name)
    alone = model(kind, "eager")
    with torch.no_grad():
        logits = ours(input_ids=ids, position_ids=pos).logits
        start = 0
        for n in DOCS:  # each document on its own, positions from 0: the ground truth
            want = alone(input_ids=ids[:1, start:start + n]).logits
            torch.testing.assert_close(logits[:1, start:start + n], want, atol=1e-5, rtol=1e-5)
            start += n
        torch.testing.assert_close(logits[1:], alone(input_ids=ids[1:]).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_gradients_equal_masked_sdpa(kind):
    name = register_document_sdpa()
    ids, pos = packed_batch(1)
    grads = []
    for attn in (name, "sdpa"):  # transformers' sdpa: the block-diagonal mask from the packed position_ids
        m = model(kind, attn, seed=1).train()
        m.config.use_cache = False
        loss = m(input_ids=ids, position_ids=pos, labels=ids).loss
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
    (a, ga), (b, gb) = grads
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_no_mask_is_built(monkeypatch):
    """The packed row reaches attention with no (B, 1, T, T) mask: what keeps sdpa on its fused kernels."""
    import ds_tp.train.attention as attention
    seen = []
    real = attention.document_sdpa

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append(attention_mask)
        return real(module, query, key, value, attention_mask, **kwargs)

    from transformers import AttentionInterface
    AttentionInterface.register(attention.DOCUMENT_SDPA, spy)
    try:
        ids, pos = packed_batch()
        with torch.no_grad():
            model("llama", attention.DOCUMENT_SDPA)(input_ids=ids, position_ids=pos)
    finally:
        attention.register_document_sdpa()
    assert seen and all(m is None for m in seen)


def test_spans_found_once_per_forward_and_anew_for_each_batch(monkeypatch):
    """Every layer gets the same position_ids: the documents are found at the first layer only (on a GPU each
    search is a device-to-host sync), also through checkpointed recomputation in backward; a new batch (even
    with equal values) is searched again, so no batch is given another's documents."""
    import ds_tp.train.attention as attention
    calls = []
    real = attention.document_spans
    monkeypatch.setattr(attention, "document_spans", lambda pos: calls.append(1) or real(pos))
    name = register_document_sdpa()
    m = model("llama", name).train()
    m.config.use_cache = False
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, pos = packed_batch()
    m(input_ids=ids, position_ids=pos, labels=ids).loss.backward()
    assert len(calls) == 1  # 2 layers, forward and recomputation
    # a second batch: one document per row, where the first batch had four in row 0
    whole = torch.arange(ids.shape[1]).expand(2, -1).clone()
    with torch.no_grad():
        got = m.eval()(input_ids=ids, position_ids=whole).logits
        want = model("llama", "eager")(input_ids=ids).logits
    assert len(calls) == 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
