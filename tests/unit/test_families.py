"""Model families: the builtin tiny models' shapes as ds-tp reads them, the per-family TP rules in the
DeepSpeed JSON, and the attention each family's class supports (decided before launch)."""
from __future__ import annotations

import json
import math

import pytest
from ds_tp.translators.family_rules import partition_config, tp_problem
from ds_tp.translators.model_shape import ModelShape
from safetensors import safe_open

from ds_tp.assets import resolve_builtin_model
from ds_tp.errors import UserError
from ds_tp.families import TINY_FAMILIES


def family_config(family: str) -> dict:
    return json.loads((resolve_builtin_model(f"builtin:tiny-{family}") / "config.json").read_text())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_the_shape_counts_what_the_model_holds(family):
    """ModelShape's parameter count (plan's memory, MFU's FLOPs) against the saved tensors of each family,
    MoE experts and tied heads included; biases are left out of the formula (within 2.5%)."""
    folder = resolve_builtin_model(f"builtin:tiny-{family}")
    shape = ModelShape.from_config(family_config(family))
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        held = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert shape.params == pytest.approx(held, rel=0.025), (shape.params, held)
    assert shape.model_type == TINY_FAMILIES[family][0]
    assert (shape.experts > 0) == ("moe" in family or family in ("mixtral", "gpt-oss"))


def test_moe_counts_the_experts_a_token_runs_through():
    from ds_tp.translators.memory import PRESETS

    mixtral = ModelShape.from_config(PRESETS["mixtral-8x7b"])
    assert round(mixtral.params / 1e9, 1) == 46.7  # the model card's 46.7B, 12.9B active
    assert round(mixtral.active_params / 1e9, 1) == 12.9
    qwen = ModelShape.from_config(PRESETS["qwen3-30b-a3b"])
    assert round(qwen.params / 1e9, 1) == 30.5 and qwen.active_mlp == 8 * 768


def test_families_whose_hf_plan_deepspeed_cannot_apply_get_ds_tps_specs():
    phi3 = ModelShape.from_config(family_config("phi3"))
    specs = partition_config(phi3)["layer_specs"]
    fused = [s for s in specs if "gate_up_proj" in s["patterns"][0]]
    assert fused == [{"patterns": [r".*\.mlp\.gate_up_proj\.weight$"], "partition_type": "column",
                      "shape": [[128, 128], -1], "partition_dim": 0}]  # gate and up halves split separately
    assert any("qkv" in s["patterns"][0] and s["partition_type"] == "skip" for s in specs)
    olmo2 = partition_config(ModelShape.from_config(family_config("olmo2")))["layer_specs"]
    assert [s["partition_type"] for s in olmo2][:2] == ["skip", "skip"]  # q/k norms read whole projections
    assert partition_config(ModelShape.from_config(family_config("qwen3"))) is None  # its own tp_plan works
    assert "attention sinks" in tp_problem(ModelShape.from_config(family_config("gpt-oss")))


def test_translate_puts_the_family_rule_in_the_deepspeed_json(tmp_path):
    from ds_tp.config import load_config
    from ds_tp.device import cpu_facts
    from ds_tp.ds_config import build_ds_config

    path = tmp_path / "c.yaml"
    path.write_text(f"base_model: {resolve_builtin_model('builtin:tiny-glm4')}\nlearning_rate: 1e-3\n"
                    "micro_batch_size: 1\ngradient_accumulation_steps: 1\ntensor_parallel_size: 2\n")
    cfg = load_config(path, (), 2)
    shape = ModelShape.from_config(family_config("glm4"))
    tp = build_ds_config(cfg, cpu_facts("test"), model=shape)[0].config["tensor_parallel"]
    assert tp["vocab_parallel_lm_head"] is False and tp["autotp_size"] == 2
    assert tp["partition_config"]["layer_specs"][2]["shape"] == [[128, 128], -1]
    gpt = tmp_path / "g.yaml"
    gpt.write_text(path.read_text().replace("tiny-glm4", "tiny-gpt-oss").replace(
        str(resolve_builtin_model("builtin:tiny-glm4")), str(resolve_builtin_model("builtin:tiny-gpt-oss"))))
    with pytest.raises(UserError) as info:
        load_config(gpt, (), 2)  # validate reads the local config.json: refused before any rank starts
    assert "tensor_parallel_size: gpt_oss models cannot be split by tensor parallelism" in str(info.value)


@pytest.mark.parametrize("family, wanted, cp, chosen, says", [
    ("gemma2", None, 1, "eager", "does not support sdpa"),
    ("qwen3", None, 1, "sdpa", None),
    ("qwen3", "flash_attention_2", 1, "sdpa", "needs a GPU"),
    ("gemma2", "sdpa", 1, None, "does not support sdpa attention"),
    ("gpt-oss", None, 2, None, "context parallelism (Ulysses) needs sdpa, flash or flex attention"),
])
def test_attention_is_one_the_family_supports(family, wanted, cp, chosen, says):
    from transformers import AutoConfig

    from ds_tp.model_config import choose_attention

    hf_config = AutoConfig.from_pretrained(resolve_builtin_model(f"builtin:tiny-{family}"))
    cfg = {"attn_implementation": wanted} if wanted else {}
    if chosen is None:
        with pytest.raises(UserError) as info:
            choose_attention(hf_config, cfg, cp, "cpu")
        assert says in str(info.value)
        return
    attn, note = choose_attention(hf_config, cfg, cp, "cpu")
    assert attn == chosen and (note is None if says is None else says in note)


def test_tp_on_an_moe_model_says_the_experts_stay_whole(tmp_path):
    from ds_tp.config import load_config

    resolve_builtin_model("builtin:tiny-mixtral")  # validate reads a builtin model's config once it is built
    path = tmp_path / "c.yaml"
    path.write_text("base_model: builtin:tiny-mixtral\nlearning_rate: 1e-3\nmicro_batch_size: 1\n"
                    "gradient_accumulation_steps: 1\ntensor_parallel_size: 2\n")
    notices = [str(n) for n in load_config(path, (), 2).notices]
    assert any("tensor_parallel_size: the 4 MoE experts of each layer stay whole on every TP rank" in n
               for n in notices), notices


def test_a_tp_plan_deepspeed_cannot_apply_is_refused_before_launch():
    """A family ds-tp has no rule for, whose HF tp_plan uses a style AutoTP lacks, is refused at prepare
    (before any rank would fail on it); families with ds-tp's own specs or plain plans are not."""
    from transformers import AutoConfig

    from ds_tp.model_config import shape_of, tp_plan_problem

    deepseek = AutoConfig.for_model("deepseek_v3")
    assert "uses mla_kv_a_proj, which DeepSpeed's AutoTP does not implement" in tp_plan_problem(
        deepseek, shape_of(deepseek))
    for model_type in ("llama", "phi3", "glm4", "olmo2"):
        config = AutoConfig.for_model(model_type)
        assert tp_plan_problem(config, shape_of(config)) is None, model_type


def test_a_fused_gate_up_is_joined_sub_block_by_sub_block():
    """Each TP rank holds [its gate slice; its up slice] of a fused gate_up_proj (phi3, glm4): the export joins
    the gate slices, then the up slices; a plain split weight (or another family's) is joined end to end."""
    import torch
    from ds_tp.translators.family_rules import tp_sub_blocks

    from ds_tp.export_checkpoint import join_tp_shards
    name = "model.layers.0.mlp.gate_up_proj.weight"
    assert tp_sub_blocks("phi3", name) == tp_sub_blocks("glm4", name) == 2
    assert tp_sub_blocks("phi3", "base_model.model.model.layers.0.mlp.gate_up_proj.lora_B.default.weight") == 2
    assert tp_sub_blocks("phi3", "base_model.model.model.layers.0.mlp.gate_up_proj.lora_A.default.weight") == 1
    assert tp_sub_blocks("phi3", "model.layers.0.mlp.down_proj.weight") == tp_sub_blocks("llama", name) == 1
    full = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)  # gate rows 0-3, up rows 4-7
    gate, up = full[:4], full[4:]
    shards = [torch.cat([gate[:2], up[:2]]), torch.cat([gate[2:], up[2:]])]  # what AutoTP's sub-block split holds
    views = [([s.reshape(-1)], tuple(s.shape)) for s in shards]
    want = torch.empty(8, 3, device="meta")
    assert torch.equal(join_tp_shards(name, views, want, None, blocks=2), full)
    assert not torch.equal(join_tp_shards(name, views, want, None, blocks=1), full)  # end to end would be wrong
