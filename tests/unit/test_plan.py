"""Memory estimates (translators/memory.py) on hand-computed cases, layout ranking, and `ds-tp plan`."""
import json

import pytest
from ds_tp.translators.layout import Layout
from ds_tp.translators.memory import (
    GIB,
    PRESETS,
    activation_bytes,
    all_layouts,
    bytes_per_param,
    candidate_layouts,
    estimate_memory,
    layout_problems,
    rank_layouts,
    smallest_fitting,
)
from ds_tp.translators.model_shape import ModelShape

from ds_tp.config.rules import shape_findings
from ds_tp.errors import UserError
from tests.conftest import CARD, EXAMPLES, assert_cli_skips_heavy_imports
from tests.unit.test_cli import run

# One layer, hidden 8, MLP 16, 2 heads of 4 (no GQA), vocab 32, untied. Counted by hand:
# layer linears q,k,v,o 4 x 64 + MLP 3 x 8 x 16 = 640; norms 2 x 8; embeddings 256; lm_head 256;
# final norm 8 -> 1176 parameters.
ONE_LAYER = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=32, tie_word_embeddings=False)
BF16_ADAM = dict(sequence_len=4, micro_batch_size=1, bf16=True, optimizer="adamw_torch")
LONG = dict(sequence_len=2048, micro_batch_size=1, gradient_checkpointing=True, bf16=True,
            optimizer="adamw_torch_fused")


def test_parameter_counts():
    tiny = ModelShape.from_config(ONE_LAYER)
    assert tiny.layer_linear_params == 640 and tiny.params == 1176
    assert ModelShape.from_config(dict(ONE_LAYER, tie_word_embeddings=True)).params == 1176 - 256
    # the presets' real sizes (the models' cards): 1.10B, 8.03B, 70.55B
    assert round(ModelShape.from_config(PRESETS["tinyllama-1.1b"]).params / 1e9, 2) == 1.10
    assert round(ModelShape.from_config(PRESETS["llama-3.1-8b"]).params / 1e9, 2) == 8.03
    assert round(ModelShape.from_config(PRESETS["llama-3.1-70b"]).params / 1e9, 2) == 70.55


def test_bytes_per_parameter_follow_zero_paper():
    assert bytes_per_param(True, "adamw") == (2, 2, 12)  # 2 + 2 + 12 (ZeRO sec. 3.1)
    assert bytes_per_param(True, "sgd") == (2, 2, 4)  # fp32 master only
    assert bytes_per_param(False, "adamw") == (4, 4, 8)  # no separate master copy in fp32
    assert bytes_per_param(False, "sgd") == (4, 4, 0)


def test_stage_0_keeps_everything_and_stage_3_divides_by_dp():
    whole = estimate_memory(ONE_LAYER, BF16_ADAM, Layout(2, 1, 1, 1), overhead_bytes=0)
    assert (whole.parameters, whole.gradients, whole.optimizer) == (2352, 2352, 14112)
    # one GPU: bf16 runs as torch autocast (as translate emits it): fp32 weights and gradients, fp32 moments
    one = estimate_memory(ONE_LAYER, BF16_ADAM, Layout(1, 1, 1, 1), overhead_bytes=0)
    assert one.precision == "bf16-autocast"
    assert (one.parameters, one.gradients, one.optimizer) == (4704, 4704, 9408)
    sharded = estimate_memory(ONE_LAYER, BF16_ADAM, Layout(1, 4, 1, 1), overhead_bytes=0)
    assert (sharded.parameters, sharded.gradients, sharded.optimizer) == (588, 588, 3528)
    assert sharded.hpz_copy == 0 and sharded.activations == whole.activations
    replicas = estimate_memory(ONE_LAYER, BF16_ADAM, Layout(4, 1, 1, 1), overhead_bytes=0)
    assert replicas.optimizer == 14112  # plain data parallel (stage 0): nothing sharded


def test_hpz_adds_a_secondary_copy_sharded_over_dp_shard():
    est = estimate_memory(ONE_LAYER, BF16_ADAM, Layout(2, 2, 1, 1), overhead_bytes=0)
    assert est.parameters == 1176 * 2 // 4  # primary partition over all 4 data-parallel ranks
    assert est.hpz_copy == 1176 * 2 // 2  # secondary 16-bit copy over the 2 ranks of a replica


def test_tp_halves_the_linears_and_lm_head_not_embeddings():
    shape = ModelShape.from_config(ONE_LAYER)
    assert shape.params_per_tp_rank(2) == 640 / 2 + 16 + 256 + 256 / 2 + 8
    est = estimate_memory(ONE_LAYER, BF16_ADAM, Layout(1, 1, 2, 1), overhead_bytes=0)
    assert est.parameters == 728 * 2


def test_activations_by_hand():
    shape = ModelShape.from_config(ONE_LAYER)
    # per token and layer (bf16): norms 2 x 8 x (4 + 2 + 2) = 128, q/k/v (8 + 16) x 2 = 48,
    # attention output twice 2 x 8 x 2 = 32, MLP 4 x 16 x 2 = 128 -> 336; 4 tokens -> 1344;
    # final norm 4 x 8 x 8 = 256; logits 4 tokens x 32 vocab x (8 + 2) = 1280.
    assert activation_bytes(shape, 4, 1, Layout(1, 1, 1, 1), 2, False) == (1344 + 256, 1280)
    # CP 2 halves the tokens of every tensor; TP 2 halves only the attention/MLP inner ones.
    assert activation_bytes(shape, 4, 1, Layout(1, 1, 1, 2), 2, False) == (800, 640)
    assert activation_bytes(shape, 4, 1, Layout(1, 1, 2, 1), 2, False)[0] == 4 * (128 + 24 + 16 + 64) + 256
    # eager attention keeps heads x seq^2 probabilities: 2 x 16 x 2 bytes
    assert activation_bytes(shape, 4, 1, Layout(1, 1, 1, 1), 2, False, "eager")[0] == 1600 + 64


def test_gradient_checkpointing_lowers_activations():
    four = dict(ONE_LAYER, num_hidden_layers=4)
    full = estimate_memory(four, BF16_ADAM, Layout(1, 1, 1, 1), overhead_bytes=0).activations
    ckpt = estimate_memory(four, dict(BF16_ADAM, gradient_checkpointing=True), Layout(1, 1, 1, 1)).activations
    assert full == 4 * 1344 + 256
    assert ckpt == 4 * (4 * 8 * 2) + 1344 + 256  # layer inputs + one layer recomputed + final norm
    big = PRESETS["llama-3.1-70b"]
    assert (estimate_memory(big, LONG, Layout(1, 8, 1, 1)).activations * 10
            < estimate_memory(big, dict(LONG, gradient_checkpointing=False), Layout(1, 8, 1, 1)).activations)


def test_8b_fits_sharded_over_8_gpus_but_not_whole_on_one():
    fits = estimate_memory(PRESETS["llama-3.1-8b"], LONG, Layout(1, 8, 1, 1))
    whole = estimate_memory(PRESETS["llama-3.1-8b"], LONG, Layout(1, 1, 1, 1))
    assert fits.total < 0.85 * 80 * GIB < 80 * GIB < whole.total
    assert whole.model_states == 16 * ModelShape.from_config(PRESETS["llama-3.1-8b"]).params
    assert rank_layouts(PRESETS["llama-3.1-8b"], LONG, 8, 80)[0].estimate.layout == Layout(1, 8, 1, 1)


def test_70b_needs_16_gpus_of_80_gib_with_adamw():
    # 70.55B x 16 bytes / 8 ranks = 141 GB of model states: no 8-GPU layout fits, whatever tp is.
    est = estimate_memory(PRESETS["llama-3.1-70b"], LONG, Layout(1, 8, 1, 1))
    assert est.model_states / GIB > 130 and est.total > 80 * GIB
    assert rank_layouts(PRESETS["llama-3.1-70b"], LONG, 8, 80) == []
    count, best = smallest_fitting(PRESETS["llama-3.1-70b"], LONG, 8, 80)
    assert count == 16 and best.estimate.total <= 80 * GIB
    assert rank_layouts(PRESETS["llama-3.1-70b"], LONG, 32, 80)[0].comfortable


def test_rank_layouts_order_and_reasons():
    ranked = rank_layouts(PRESETS["llama-3.1-8b"], LONG, 8, 80)
    keys = [(not r.comfortable, r.estimate.layout.tp * r.estimate.layout.cp) for r in ranked]
    assert keys == sorted(keys) and all(r.fits and r.why for r in ranked)
    assert "no TP/CP traffic" in ranked[0].why and "inside one node" in ranked[0].why
    # 32 GPUs in 4 nodes: hpZ keeps the weight all-gathers inside a node and comes first
    first = rank_layouts(PRESETS["llama-3.1-70b"], LONG, 32, 80)[0]
    assert first.estimate.layout == Layout(4, 8, 1, 1) and "hpZ" in first.why
    misses = all_layouts(PRESETS["llama-3.1-70b"], LONG, 8, 80)
    assert [r.estimate.total for r in misses] == sorted(r.estimate.total for r in misses)
    assert "does not fit" in misses[0].why


def test_candidates_follow_the_shape_rules():
    tiny = ModelShape.from_config(PRESETS["tinyllama-1.1b"])  # 32 heads, 4 kv heads
    layouts = candidate_layouts(tiny, 2048, 16)
    assert all(lay.world == 16 and lay.tp * lay.cp <= 8 for lay in layouts)
    assert any(lay.tp > 1 and lay.cp > 1 for lay in layouts)  # ds-tp composes TP and CP
    assert {lay.tp for lay in layouts} == {1, 2, 4} and {lay.cp for lay in layouts} == {1, 2, 4, 8}
    for tp, cp in [(1, 1), (2, 1), (8, 1), (1, 8), (1, 4), (1, 3)]:
        rule = shape_findings(tiny, Layout(1, 1, tp, cp))
        assert bool(layout_problems(tiny, tp, cp, 2048)) == bool(rule), (tp, cp)
    assert layout_problems(tiny, 1, 2, 2047) == ["sequence_len 2047 not divisible by cp 2"]


def test_bad_model_shape_is_a_user_error():
    with pytest.raises(UserError, match="config.json: missing or not a positive integer: hidden_size"):
        ModelShape.from_config({"intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 1,
                                "vocab_size": 8}, "config.json")


def test_plan_cli_70b_on_8_gpus():
    p = run("plan", CARD / "recommended-70b.yaml", "--gpus", "8", "--gpu-memory", "80")
    assert p.returncode == 0, p.stderr
    assert "70.55B parameters (preset llama-3.1-70b for meta-llama/Llama-3.1-70B)" in p.stdout
    assert "config's layout: dp_replicate(1) * dp_shard(4) * tp(2) * cp(1) = 8" in p.stdout
    assert "nothing fits on 8 x 80 GiB" in p.stdout and "smallest GPU count that fits: 16 GPUs" in p.stdout


def test_plan_cli_ranks_and_infers_dp_shard():
    p = run("plan", EXAMPLES / "single-gpu-8b.yaml", "--gpus", "8", "--show", "3")
    assert p.returncode == 0, p.stderr
    assert "dp_shard(8)" in p.stdout and "layouts of 8 GPUs that fit in 80 GiB, best first" in p.stdout
    assert "rep 1 x shard 8 x tp 1 x cp 1" in p.stdout


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0"], "error: --gpus: expected a positive integer, got '0'"),
    (["--gpus", "two"], "error: --gpus: expected a positive integer, got 'two'"),
    ([], "error: --gpus: required (how many GPUs to plan for)"),
    (["--gpus", "8", "--gpu-memory", "-80"], "error: --gpu-memory: expected a positive number, got '-80'"),
])
def test_plan_cli_bad_numbers_are_one_line(args, message):
    p = run("plan", CARD / "recommended-70b.yaml", *args)
    errors = [line for line in p.stderr.splitlines() if not line.startswith(("warning:", "notice:"))]
    assert p.returncode == 2 and errors == [message] and p.stdout == ""


def test_plan_cli_unknown_hub_model_and_local_folder(tmp_path, write_config):
    p = run("plan", write_config("base_model: someone/unknown-13b\n"), "--gpus", "8")
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and "--model-shape" in errors[0] and "Traceback" not in p.stderr
    p = run("plan", write_config("base_model: someone/unknown-13b\n"), "--gpus", "8", "--model-shape",
            "llama-3.1-8b")
    assert p.returncode == 0 and "preset llama-3.1-8b" in p.stdout
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(ONE_LAYER))
    p = run("plan", write_config("base_model: model\n"), "--gpus", "2", "--gpu-memory", "24")
    assert p.returncode == 0, p.stderr
    assert "1.18K parameters" in p.stdout and "config.json" in p.stdout


def test_plan_does_not_import_torch():
    assert_cli_skips_heavy_imports(['plan', str(CARD / 'recommended-70b.yaml'), '--gpus', '16'])


def test_tp_cp_groups_stay_inside_a_node_and_ranking_matches_the_reason():
    tiny = ModelShape.from_config(PRESETS["tinyllama-1.1b"])
    assert all(lay.tp * lay.cp <= 4 for lay in candidate_layouts(tiny, 2048, 16, per_node=4))
    ranked = rank_layouts(PRESETS["tinyllama-1.1b"], LONG, 32, 80)
    order = [(r.estimate.layout.dp_replicate, r.estimate.layout.dp_shard) for r in ranked
             if r.estimate.layout.tp * r.estimate.layout.cp == 1]
    # shard groups inside one node (8 x 4 as much as 4 x 8) before one spanning 4 nodes
    assert order.index((8, 4)) < order.index((1, 32)) and order.index((4, 8)) < order.index((1, 32))


def test_adapter_parameters_match_what_peft_builds():
    """translators/adapter.py counts LoRA's parameters without peft; peft itself built the tiny Llama's
    rank-16 adapters on every linear layer with 90,112 parameters (prepare's note, from a meta model)."""
    from ds_tp.translators.adapter import adapter_params, resolve_adapter

    from ds_tp.assets import TINY_LLAMA_SHAPE

    adapter, _ = resolve_adapter({"adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_target_linear": True})
    shape = ModelShape.from_config({**TINY_LLAMA_SHAPE, "vocab_size": 112})
    assert adapter_params(adapter, shape, 1).trainable == 90_112
    two = adapter_params(adapter, shape, 2)  # column layers split B, row layers split A: per TP rank
    assert 90_112 / 2 < two.trainable < 90_112 and two.frozen_quantizable == 4 * shape.layer_linear_params / 2


def test_an_adapter_makes_the_cards_70b_fit_on_8_gpus():
    """The card's 70B config: full fine-tuning needs ~144 GiB per GPU on 8 x 80 GB; with LoRA only the
    adapters have gradients and optimizer state, and the frozen bf16 base is ZeRO-3-partitioned."""
    import yaml

    shape = ModelShape.from_config(PRESETS["llama-3.1-70b"])
    layout = Layout(1, 4, 2, 1)
    full = estimate_memory(shape, yaml.safe_load((CARD / "recommended-70b.yaml").read_text()), layout)
    lora = estimate_memory(shape, yaml.safe_load((CARD / "recommended-70b-lora.yaml").read_text()), layout)
    assert full.total > 80 * GIB > lora.total
    assert lora.parameters == pytest.approx(full.parameters, rel=0.01)  # the same bf16 weights, partitioned
    assert lora.gradients < full.gradients / 100 and lora.optimizer < full.optimizer / 100
    p = run("plan", CARD / "recommended-70b-lora.yaml", "--gpus", "8", "--gpu-memory", "80")
    assert p.returncode == 0, p.stderr
    assert "note: adapter lora:" in p.stdout and "nothing fits" not in p.stdout
    assert "layouts of 8 GPUs that fit in 80 GiB" in p.stdout


def test_qlora_stores_the_linears_in_half_a_byte_and_loads_them_whole():
    from ds_tp.translators.adapter import QUANT_BYTES

    shape = ModelShape.from_config(PRESETS["llama-3.1-8b"])
    cfg = dict(LONG, adapter="qlora", load_in_4bit=True, lora_r=8, lora_alpha=16, lora_target_linear=True)
    est = estimate_memory(shape, cfg, Layout(1, 8, 1, 1))
    linears = shape.layers * shape.layer_linear_params
    other = shape.params - linears
    assert est.load_peak > (linears * QUANT_BYTES["4bit"] + other * 2)  # + the adapters, whole on each rank
    assert est.parameters == pytest.approx(est.load_peak / 8, rel=1e-6)  # then ZeRO-3 partitions it
    assert est.total >= est.load_peak + est.overhead and any("loads whole" in n for n in est.notes)


def test_preference_tuning_doubles_sequences_and_counts_the_frozen_reference():
    """rl: each row is two sequences (activations and logits x2); a full fine-tune's frozen reference adds a
    second copy of the weights, partitioned like the policy's; precomputed log-probs and adapters add none."""
    layout = Layout(1, 4, 1, 1)
    sft = estimate_memory(ONE_LAYER, BF16_ADAM, layout, overhead_bytes=0)
    dpo = estimate_memory(ONE_LAYER, {**BF16_ADAM, "rl": "dpo"}, layout, overhead_bytes=0)
    assert (dpo.activations, dpo.logits) == (2 * sft.activations, 2 * sft.logits)
    assert dpo.parameters == 2 * sft.parameters and dpo.gradients == sft.gradients
    cached = estimate_memory(ONE_LAYER, {**BF16_ADAM, "rl": "dpo", "precompute_ref_log_probs": True}, layout,
                             overhead_bytes=0)
    assert cached.parameters == sft.parameters and any("frozen reference" in n for n in dpo.notes)
