"""Long-context memory features change what is held in memory, never a trained value: the chunked loss (fused
where the LM head is rank-local, tiled through the head module where it is ZeRO-3-partitioned or TP-split), the
tiled MLP and activation offload, all on at once, give the per-step losses of the plain run on each layout
(SGD, so a wrong gradient would show in the later steps)."""
import pytest

from tests.ranks.harness import SHARP, losses, train

ALL_ON = ["--chunked-cross-entropy", "--chunked-cross-entropy-num-chunks", "3", "--tiled-mlp",
          "--tiled-mlp-num-shards", "3", "--gradient-checkpointing", "offload"]


@pytest.mark.parametrize("layout, world, loss_line", [
    (["--dp-shard-size", "2"], 2, "the LM head (ZeRO-3-partitioned) and loss over 3 sequence tiles"),
    (["--dp-shard-size", "1", "--tensor-parallel-size", "2"], 2, "the LM head (TP-split) and loss over 3 sequence tiles"),
    (["--dp-shard-size", "1", "--context-parallel-size", "2"], 2, "LM head and loss fused in 3 chunks"),
], ids=["zero3", "tp2", "cp2"])
def test_memory_features_train_the_same_values(tmp_path, capfd, layout, world, loss_line):
    extra = [*layout, "--max-steps", "4"]
    plain = losses(train(tmp_path / "plain", [*SHARP, *extra], world))
    assert "tiled_mlp" not in capfd.readouterr().out
    tiled = losses(train(tmp_path / "tiled", [*SHARP, *extra, *ALL_ON], world))
    out = capfd.readouterr().out
    assert loss_line in out, out[-3000:]
    assert "tiled_mlp: 4 MLP(s) over 3 sequence tile(s) each" in out  # the builtin model's 4 layers
    assert "activation checkpointing, layer inputs in host memory" in out
    assert len(plain) == len(tiled) == 4
    assert max(abs(a - b) for a, b in zip(plain, tiled)) < 1e-5, (plain, tiled)
    assert plain[-1] < plain[0]
