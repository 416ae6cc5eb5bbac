"""unfrozen_parameters: only the matched parameters change, every other one is bit-for-bit the base
model's after training, under ZeRO-3 and under AutoTP (2 spawned ranks each)."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from ds_tp.assets import resolve_builtin_model
from tests.ranks.harness import train

PATTERNS = "[model.layers.3.mlp, model.norm.weight$]"


@pytest.mark.parametrize("layout", [["--dp-shard-size", "2"], ["--tensor-parallel-size", "2", "--dp-shard-size", "1"]],
                         ids=["zero3", "tp2"])
def test_only_the_unfrozen_parameters_change(tmp_path, layout):
    out = tmp_path / "run"
    train(out, ["--max-steps", "3", "--logging-steps", "1", "--sequence-len", "64", "--learning-rate", "1e-2",
                "--warmup-steps", "0", "--unfrozen-parameters", PATTERNS, *layout], 2)
    before = dict(AutoModelForCausalLM.from_pretrained(resolve_builtin_model("builtin:tiny-llama")).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    changed = sorted(name for name, p in after.items() if not torch.equal(p, before[name]))
    assert changed == ["model.layers.3.mlp.down_proj.weight", "model.layers.3.mlp.gate_proj.weight",
                       "model.layers.3.mlp.up_proj.weight", "model.norm.weight"]
