"""LoRA and QLoRA on every layout: per-step losses and the saved adapters equal to one process (SGD,
6 steps); one process equal to a plain torch + peft loop; the frozen base untouched; checkpoints that
hold the adapter only and resume bitwise; lora_model_dir; merge-lora equal to base + adapter."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ds_tp.runfiles import PreparedRun
from tests.conftest import EXAMPLES
from tests.ranks.harness import SHARP, losses, train


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict:
    """The quickstart-lora/-qlora examples without lora_modules_to_save (refused with TP, and the embeddings
    they train are not adapters): {"lora": path, "qlora": path, "phi3-lora": path}. phi3-lora: the LoRA example
    on the tiny Phi-3, whose fused gate_up_proj (and its lora_B) TP splits gate and up sub-block by sub-block."""
    folder = tmp_path_factory.mktemp("configs")
    out = {}
    for kind in ("lora", "qlora", "phi3-lora"):
        example = EXAMPLES / f"quickstart-{kind.removeprefix('phi3-')}.yaml"
        lines = [x for x in example.read_text().splitlines() if not x.startswith("lora_modules_to_save")]
        if kind == "phi3-lora":
            lines = [x.replace("builtin:tiny-llama", "builtin:tiny-phi3") for x in lines]
        out[kind] = folder / f"{kind}.yaml"
        out[kind].write_text("\n".join(lines).replace("path: examples/", f"path: {EXAMPLES}/") + "\n")
    return out
STEPS = [*SHARP, "--max-steps", "6", "--learning-rate", "0.2"]
LAYOUTS = [
    ("lora", "dp_shard2", ["--dp-shard-size", "2", "--gradient-accumulation-steps", "1"], 2),
    ("lora", "tp2", ["--dp-shard-size", "1", "--tensor-parallel-size", "2", "--gradient-accumulation-steps", "2"], 2),
    ("lora", "cp2", ["--dp-shard-size", "1", "--context-parallel-size", "2", "--gradient-accumulation-steps", "2"], 2),
    ("lora", "tp2_dp_shard2", ["--dp-shard-size", "2", "--tensor-parallel-size", "2",
                               "--gradient-accumulation-steps", "1"], 4),
    ("lora", "hpz_rep2_shard2", ["--dp-shard-size", "2", "--dp-replicate-size", "2",
                                 "--gradient-accumulation-steps", "1"], 4),
    ("qlora", "dp_shard2", ["--dp-shard-size", "2", "--gradient-accumulation-steps", "1"], 2),
    ("qlora", "cp2", ["--dp-shard-size", "1", "--context-parallel-size", "2", "--gradient-accumulation-steps", "2"], 2),
    ("phi3-lora", "tp2", ["--dp-shard-size", "1", "--tensor-parallel-size", "2", "--gradient-accumulation-steps", "2"], 2),
]
ADAPTED = {"lora": 56, "qlora": 56, "phi3-lora": 16}  # A and B of each adapted linear layer (Phi-3: 4 in 2 blocks)


def adapter_weights(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, configs):
    """One-process runs by (adapter, global batch), each trained once per module."""
    runs = {}

    def get(kind: str, global_batch: int):
        if (kind, global_batch) not in runs:
            out = tmp_path_factory.mktemp(f"{kind}{global_batch}") / "run"
            rows = train(out, [*STEPS, "--dp-shard-size", "1", "--gradient-accumulation-steps", str(global_batch)],
                         1, config=configs[kind])
            runs[kind, global_batch] = out, losses(rows)
        return runs[kind, global_batch]
    return get


@pytest.mark.parametrize("kind, name, overrides, nproc", LAYOUTS, ids=[f"{k}-{n}" for k, n, _, _ in LAYOUTS])
def test_adapter_layout_matches_one_process(one_process, configs, tmp_path, capfd, kind, name, overrides, nproc):
    out = tmp_path / name
    got = losses(train(out, [*STEPS, *overrides], nproc, config=configs[kind]))
    if "tp2" in name and kind == "lora":  # the rank log's sharding report: the layers and adapters really are split
        log = capfd.readouterr().out
        prefix = "rank 0 base_model.model.model.layers.0."
        for param, split in (("self_attn.q_proj.base_layer.weight: global [64, 64], on TP rank 0/2 [32, 64]", "column"),
                             ("self_attn.q_proj.lora_A.default.weight: global [16, 64], on TP rank 0/2 [16, 64]", "whole"),
                             ("self_attn.q_proj.lora_B.default.weight: global [64, 16], on TP rank 0/2 [32, 16]", "column"),
                             ("mlp.down_proj.base_layer.weight: global [64, 256], on TP rank 0/2 [64, 128]", "row"),
                             ("mlp.down_proj.lora_A.default.weight: global [16, 256], on TP rank 0/2 [16, 128]", "row"),
                             ("mlp.down_proj.lora_B.default.weight: global [64, 16], on TP rank 0/2 [64, 16]", "whole")):
            assert prefix + param in log, (split, param)
    plan = json.loads((out / "ds_tp" / "run.json").read_text())
    assert plan["run"]["adapter"]["kind"] == kind.removeprefix("phi3-")
    ref_out, ref = one_process(kind, plan["global_batch"])
    assert len(got) == len(ref) == 6 and ref[-1] < ref[0]
    assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-5, (got, ref)
    mine, theirs = adapter_weights(out), adapter_weights(ref_out)
    assert mine.keys() == theirs.keys() and len(mine) == ADAPTED[kind]  # Llama: A and B of 7 linear layers in 4 blocks
    assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) < 1e-5


def reference_losses(run_file: Path, steps: int, adapter_dir: Path | None = None) -> list[float]:
    """A plain torch + peft loop (no DeepSpeed, no ds-tp loop) on ds-tp's batches: the LoraConfig written
    out here, the same seed before get_peft_model, SGD, loss summed over the global batch's tokens."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from ds_tp.data import load_prepared
    from ds_tp.model_config import load_tokenizer
    from ds_tp.train.batches import BatchOrder, collate

    plan = PreparedRun.read(run_file)
    cfg = plan.config
    rows, _ = load_prepared(Path(plan.prepared_path))
    micro, gas = cfg["micro_batch_size"], cfg["gradient_accumulation_steps"]
    order = BatchOrder(rows=len(rows), micro=micro, gas=gas, dp=1, seed=cfg["seed"], steps_per_epoch=plan.steps_per_epoch)
    pad = load_tokenizer(plan.model_path, cfg).pad_token_id
    base = AutoModelForCausalLM.from_pretrained(plan.model_path, dtype=torch.float32, attn_implementation="sdpa")
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    else:
        torch.manual_seed(cfg["seed"])
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                                                task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(params, lr=cfg["learning_rate"])
    out = []
    for step in range(steps):
        batches = [collate([rows[int(i)] for i in order.micro_rows(step, m, 0)], pad) for m in range(gas)]
        tokens = sum(int((b["shift_labels"] != -100).sum()) for b in batches)
        total = 0.0
        for b in batches:
            logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), b["shift_labels"].flatten(),
                                                     ignore_index=-100, reduction="sum") / tokens
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
        sgd.step()
        sgd.zero_grad()
        out.append(total)
    return out


def test_one_process_equals_a_plain_torch_and_peft_loop(one_process):
    out, ours = one_process("lora", 2)
    assert ours == pytest.approx(reference_losses(out / "ds_tp" / "run.json", 6), abs=1e-5)


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, configs):
    """LoRA under ZeRO-3 with AdamW and weight decay 0.5 (frozen weights in the optimizer would decay),
    an eval at the end, and a checkpoint at step 3."""
    out = tmp_path_factory.mktemp("zero3") / "A"
    rows = train(out, [*STEPS, "--optimizer", "adamw_torch", "--learning-rate", "0.01", "--weight-decay", "0.5",
                       "--val-set-size", "0.05", "--eval-steps", "6", "--save-steps", "3"], 2, config=configs["lora"])
    return out, rows


def test_only_the_adapter_trains_and_is_saved(zero3_run):
    """The frozen base is untouched: the run's own final eval_loss equals the base from disk plus the saved
    adapter; the checkpoints hold the adapter's weights and optimizer state only."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ds_tp.data import load_prepared
    from ds_tp.model_config import load_tokenizer
    from ds_tp.train.batches import collate

    out, rows = zero3_run
    [final] = [r["eval_loss"] for r in rows if "eval_loss" in r]
    plan = PreparedRun.read(out / "ds_tp" / "run.json")
    _, evaluation = load_prepared(Path(plan.prepared_path))
    base = AutoModelForCausalLM.from_pretrained(plan.model_path, dtype=torch.float32, attn_implementation="sdpa")
    model = PeftModel.from_pretrained(base, out).eval()
    batch = collate(list(evaluation), load_tokenizer(plan.model_path, plan.config).pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    offline = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["shift_labels"].flatten(), ignore_index=-100)
    assert final == pytest.approx(offline.item(), abs=1e-5)
    states = torch.load(out / "checkpoint-3" / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)
    saved = [name for group in states["param_shapes"] for name in group]
    assert len(saved) == 56 and all(".lora_A." in n or ".lora_B." in n for n in saved), saved[:4]
    assert not states["frozen_param_shapes"]
    size = sum(f.stat().st_size for f in (out / "checkpoint-3").glob("*_states.pt"))
    assert size < 4 * 90_112 * 4  # adapter weights + Adam moments: no copy of the 350k-parameter base


def test_resume_from_an_adapter_checkpoint_is_bitwise(zero3_run, configs, tmp_path):
    out, rows = zero3_run
    resumed = train(tmp_path / "B", [*STEPS, "--optimizer", "adamw_torch", "--learning-rate", "0.01",
                                     "--weight-decay", "0.5", "--val-set-size", "0.05", "--eval-steps", "6",
                                     "--resume-from-checkpoint", str(out / "checkpoint-3")], 2, config=configs["lora"])
    assert losses(resumed) == losses(rows)[3:]
    mine, theirs = adapter_weights(tmp_path / "B"), adapter_weights(out)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_lora_model_dir_starts_from_a_saved_adapter(zero3_run, configs, tmp_path):
    out, _ = zero3_run
    rows = train(tmp_path / "C", [*STEPS, "--max-steps", "1", "--dp-shard-size", "1",
                                  "--lora-model-dir", str(out / "checkpoint-3")], 1, config=configs["lora"])
    [expected] = reference_losses(tmp_path / "C" / "ds_tp" / "run.json", 1, adapter_dir=out / "checkpoint-3")
    fresh = reference_losses(tmp_path / "C" / "ds_tp" / "run.json", 1)
    assert losses(rows)[0] == pytest.approx(expected, abs=1e-5) and abs(expected - fresh[0]) > 1e-3


def test_merge_lora_equals_base_plus_adapter(zero3_run, configs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ds_tp.cli import main

    out, _ = zero3_run
    plan = PreparedRun.read(out / "ds_tp" / "run.json")
    result = CliRunner().invoke(main, ["merge-lora", str(configs["lora"]), "--output-dir", str(tmp_path / "m"),
                                       "--lora-model-dir", str(out)])
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m" / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(plan.model_path).eval()
    ids = torch.randint(3, 100, (3, 24), generator=torch.Generator().manual_seed(7))  # held-out token strings
    with torch.no_grad():
        before = base(input_ids=ids).logits
        with_adapter = PeftModel.from_pretrained(base, out).eval()(input_ids=ids).logits
        after = merged(input_ids=ids).logits
    assert (after - with_adapter).abs().max().item() < 1e-5
    assert (after - before).abs().max().item() > 1e-2  # the adapter changed the model
    # streamed, tensor by tensor: the same weights as peft's merge_and_unload of the loaded model
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(plan.model_path), out).merge_and_unload()
    mine, theirs = merged.state_dict(), reference.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
