"""chunked_cross_entropy without spawning ranks: the loss is computed through the training loop's own
call site (Trainer._loss_sum, on a tiny real Llama) and must (1) never make a tensor as large as the full
logits (batch x seq x vocab), forward or backward, and (2) give the loss and every gradient of the plain
cross-entropy of the full logits: fp32, bf16 autocast (fp32 weights, as one device runs bf16) and bf16
weights (DeepSpeed's bf16 block), with the LM head tied to the input embeddings or not."""
from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from ds_tp.translators.long_context import LongContext
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlamaConfig, LlamaForCausalLM

from ds_tp.train.loop import Trainer

VOCAB, HIDDEN, CHUNKS = 256, 32, 4
ROWS, LENGTH = 2, 48  # 96 tokens: full logits 96 x 256; a chunk 24 x 256, smaller than the head (256 x 32)


class LargestVocabTensor(TorchDispatchMode):
    """The most elements of any tensor an operator makes with a dimension of the vocabulary's size."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and VOCAB in t.shape:
                self.largest = max(self.largest, t.numel())
        return out


def tiny_llama(tied: bool, dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied,
                         max_position_embeddings=128)
    model = LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():  # a head far from zero, so that logits (and their rounding) matter
        model.get_output_embeddings().weight.normal_(0, 1.0)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    return model.train()


def rows() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for n in (LENGTH, LENGTH - 9):  # the second is padded: label -100 on the padding
        ids = torch.randint(0, VOCAB, (n,), generator=g).tolist()
        labels = [-100] * 5 + ids[5:]  # a masked prompt
        out.append({"input_ids": ids, "labels": labels, "position_ids": list(range(n))})
    return out


def loss_sum(model, chunked, autocast: bool) -> torch.Tensor:
    """chunked: False (full logits), True / "fused" (the head's weight fused into the loss) or "tiled"."""
    """Trainer._loss_sum on this model, as a one-rank stage-0 run sets it up (the engine's forward runs the
    model under autocast when DeepSpeed's torch_autocast is on; the chunked loss runs outside it)."""
    def engine(**batch):
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
            return model(**batch)
    trainer = SimpleNamespace(
        pad_id=0, pad_to=None, mesh=SimpleNamespace(coords={"cp": 0}),
        resolved=SimpleNamespace(sequence_divisor=1, long_context=LongContext(loss_chunks=CHUNKS)),
        layout=SimpleNamespace(cp=1), device=torch.device("cpu"), engine=engine, forward_memory=nullcontext,
        loss_head=None if not chunked else ("tiled", model.get_output_embeddings()) if chunked == "tiled"
        else ("fused", model.get_output_embeddings().weight),
        no_positions=torch.zeros(0, dtype=torch.long), plan=SimpleNamespace(config={
            "chunked_cross_entropy_num_chunks": CHUNKS}),
        autocast=(lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else nullcontext)
    trainer._to_device = lambda batch: Trainer._to_device(trainer, batch)
    trainer._chunk_rows = lambda n: Trainer._chunk_rows(trainer, n)
    return Trainer._loss_sum(trainer, rows())


def loss_and_grads(model, chunked: bool, autocast: bool) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = loss_sum(model, chunked, autocast)
    loss.backward()
    return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_full_logits_are_never_made(tied):
    model = tiny_llama(tied)
    full = ROWS * LENGTH * VOCAB
    plain = LargestVocabTensor()
    with plain:
        loss_sum(model, chunked=False, autocast=False).backward()
    assert plain.largest >= full  # the recorder sees the full logits where they are made
    chunk_rows = -(-ROWS * LENGTH // CHUNKS)
    for how in ("fused", "tiled"):
        chunked = LargestVocabTensor()
        with chunked:
            loss_sum(model, chunked=how, autocast=False).backward()
        assert chunked.largest <= max(chunk_rows * VOCAB, VOCAB * HIDDEN) < full, (how, chunked.largest, full)


# (weights, autocast, relative tolerance of the loss, of each gradient's largest difference over its largest
# value). Measured: the losses agree within 1e-7 in every case (the chunk's logits are the same bf16 products;
# chunked logits in fp32 against the plain bf16 ones differ by 1e-4); gradients within 7e-7 (fp32) and 7e-3 (bf16).
CASES = {"fp32": (torch.float32, False, 1e-6, 1e-5), "bf16-autocast": (torch.float32, True, 1e-5, 2e-2),
         "bf16-weights": (torch.bfloat16, False, 1e-5, 2e-2)}


@pytest.mark.parametrize("how", ["fused", "tiled"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("precision", list(CASES))
def test_loss_and_gradients_equal_the_plain_cross_entropy(tied, precision, how):
    dtype, autocast, loss_tol, grad_tol = CASES[precision]
    model = tiny_llama(tied, dtype)
    want_loss, want = loss_and_grads(model, chunked=False, autocast=autocast)
    got_loss, got = loss_and_grads(model, chunked=how, autocast=autocast)
    assert abs(got_loss - want_loss) <= loss_tol * abs(want_loss), (got_loss, want_loss)
    assert want.keys() == got.keys()
    for name in want:
        scale = want[name].abs().max().item()
        assert scale > 0, name  # every parameter gets a gradient, the head included
        assert (got[name] - want[name]).abs().max().item() <= grad_tol * scale, name
