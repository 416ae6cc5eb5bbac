"""train/tiled.py on one process: the tiled MLP and the tiled loss give the values and gradients of the whole
computation, make exactly the asked number of module calls (ranks must agree under ZeRO-3), and activation
offload routes the checkpointed layers' inputs through the host-memory hooks."""
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from ds_tp.train import tiled

SHAPE = dict(vocab_size=97, hidden_size=32, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2)


def _model(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**SHAPE, attn_implementation="eager")).train()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_tiled_mlp_equals_the_whole_mlp_and_calls_each_tile():
    whole, tiled_model = _model(), _model()
    ids = torch.randint(0, 97, (2, 11))
    whole(input_ids=ids, labels=ids).loss.backward()
    calls = []
    tiled_model.model.layers[0].mlp.gate_proj.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    assert tiled.install_tiled_mlp(tiled_model, 5, lambda _: None) == 3
    loss = tiled_model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert len(calls) == 10 and sum(calls) == 2 * 22  # 5 tiles in forward, 5 again in backward; 22 rows each time
    want, got = _grads(whole), _grads(tiled_model)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-6), name


def test_tiled_mlp_makes_the_same_calls_with_more_tiles_than_rows():
    model = _model()
    calls = []
    model.model.layers[1].mlp.up_proj.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    tiled.install_tiled_mlp(model, 8, lambda _: None)
    ids = torch.randint(0, 97, (1, 3))
    model(input_ids=ids, labels=ids).loss.backward()
    assert len(calls) == 16 and sorted(calls)[-1] == 1  # torch.chunk would have made 3 calls, not 8


def test_tiled_loss_equals_the_full_logits():
    torch.manual_seed(1)
    head = torch.nn.Linear(24, 113, bias=False)
    hidden = torch.randn(2, 37, 24, requires_grad=True)
    labels = torch.randint(0, 113, (2, 37))
    labels[:, ::4] = -100
    ref = F.cross_entropy(head(hidden).reshape(-1, 113), labels.reshape(-1), ignore_index=-100, reduction="sum")
    (ref * 0.5).backward()
    want_h, want_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    calls = []
    head.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[1]))
    got = tiled.tiled_loss_sum(head, hidden, labels, 4, nullcontext)
    (got * 0.5).backward()
    assert torch.allclose(got, ref, rtol=1e-6)
    assert torch.allclose(hidden.grad, want_h, atol=1e-6) and torch.allclose(head.weight.grad, want_w, atol=1e-6)
    assert calls == [19, 19, 19, 17, 19, 19, 19, 17]  # 74 tokens in 4 tiles, forward then backward


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_offload_holds_each_layers_input(monkeypatch, reentrant):
    packed = []
    real = torch.autograd.graph.save_on_cpu

    class Recording(real):
        def __init__(self, pin_memory=False):
            super().__init__(pin_memory)
            pack, unpack = self.pack_hook, self.unpack_hook
            self.pack_hook = lambda t: packed.append(tuple(t.shape)) or pack(t)
            self.unpack_hook = unpack

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Recording)
    ids = torch.randint(0, 97, (1, 13))
    plain = _model()
    plain(input_ids=ids, labels=ids).loss.backward()
    model = _model()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()
    with tiled.activation_offload(torch.device("cpu")):
        loss = model(input_ids=ids, labels=ids).loss
    layer_inputs = packed.count((1, 13, 32))
    assert layer_inputs >= 3, packed  # every checkpointed layer's input went through the offload hooks
    assert len(packed) < 20, packed  # and little else: the layers' insides are recomputed (127 without checkpoints)
    loss.backward()
    want, got = _grads(plain), _grads(model)
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-6), name


def test_tiled_mlp_trains_its_own_weights_when_everything_below_is_frozen():
    """unfrozen_parameters on the MLPs only: the layer input needs no gradient, the MLP's weights do."""
    whole, tiled_model = _model(), _model()
    for model in (whole, tiled_model):
        for name, param in model.named_parameters():
            param.requires_grad_(".layers.0.mlp." in name)
    tiled.install_tiled_mlp(tiled_model, 4, lambda _: None)
    ids = torch.randint(0, 97, (1, 9))
    whole(input_ids=ids, labels=ids).loss.backward()
    tiled_model(input_ids=ids, labels=ids).loss.backward()
    want, got = _grads(whole), _grads(tiled_model)
    assert want.keys() == got.keys() and len(want) == 3
    for name in want:
        assert torch.allclose(want[name], got[name], atol=1e-6), name
