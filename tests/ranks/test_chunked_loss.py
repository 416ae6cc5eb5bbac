"""chunked_cross_entropy changes how the loss is computed, not its value: per-step losses equal the
standard cross-entropy's (SGD, so any gradient difference would show in the later steps)."""
import re

import pytest
import torch
import torch.nn.functional as F

from ds_tp.train.loss import linear_cross_entropy_sum
from tests.ranks.harness import SHARP, losses, train


def test_loss_and_gradients_equal_the_full_logits():
    torch.manual_seed(0)
    hidden = torch.randn(301, 24, requires_grad=True)
    weight = torch.randn(113, 24, requires_grad=True)
    labels = torch.randint(0, 113, (301,))
    labels[::5] = -100
    ref = F.cross_entropy(hidden @ weight.t(), labels, ignore_index=-100, reduction="sum")
    ref.backward(torch.tensor(0.5))
    want_h, want_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got = linear_cross_entropy_sum(hidden, weight, labels, chunk=64)
    (got * 0.5).backward()
    assert torch.allclose(got, ref, rtol=1e-5)
    assert torch.allclose(hidden.grad, want_h, atol=1e-5) and torch.allclose(weight.grad, want_w, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy_sum(hidden, weight, labels, chunk=7), ref, rtol=1e-5)


@pytest.mark.parametrize("world", [1], ids=["stage0"])  # cp 2, ZeRO-3 and TP: tests/ranks/test_long_context.py
def test_training_losses_match_the_standard_loss(tmp_path, capfd, world):
    extra = ["--dp-shard-size", "1", "--max-steps", "4"] + (["--context-parallel-size", "2"] if world == 2 else [])
    plain = losses(train(tmp_path / "plain", [*SHARP, *extra], world))
    assert "chunked_cross_entropy" not in capfd.readouterr().out
    chunked = losses(train(tmp_path / "chunked", [*SHARP, *extra, "--chunked-cross-entropy",
                                                   "--chunked-cross-entropy-num-chunks", "3"], world))
    assert "LM head and loss fused in 3 chunks" in capfd.readouterr().out  # the chunked path ran
    assert len(plain) == len(chunked) == 4
    assert max(abs(a - b) for a, b in zip(plain, chunked)) < 1e-4, (plain, chunked)
    assert plain[-1] < plain[0]


def test_torch_compile_trains_the_same(tmp_path, capfd):
    """torch_compile goes through engine.compile and the compiled model is what trains: dynamo compiled at least
    one graph during the steps (engine.compile alone compiles nothing; a model left uncompiled reports 0). The
    aot_eager backend runs dynamo and AOTAutograd, the front half of inductor, without inductor's C++ build
    (measured: inductor adds ~18 s of compiling on 2 CPU cores); it must not change a loss."""
    extra = ["--dp-shard-size", "1", "--max-steps", "3"]
    plain = losses(train(tmp_path / "eager", [*SHARP, *extra], 1))
    assert "torch_compile:" not in capfd.readouterr().out
    compiled = losses(train(tmp_path / "compiled", [*SHARP, *extra, "--torch-compile", "--torch-compile-backend",
                                                    "aot_eager"], 1))
    out = capfd.readouterr().out
    assert "torch_compile: model compiled with backend aot_eager" in out
    graphs = re.search(r"torch_compile: (\d+) graph\(s\) compiled by dynamo and run in training", out)
    assert graphs and int(graphs[1]) >= 1, out[-2000:]
    assert len(plain) == len(compiled) == 3
    assert max(abs(a - b) for a, b in zip(plain, compiled)) < 1e-5, (plain, compiled)
