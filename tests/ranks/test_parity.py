"""A layout changes who computes, never what: per-step losses equal to one process (SGD, 6 steps), and so
do the weights of the final export and of `ds-tp export` of the step-3 checkpoint (ZeRO partitions and
TP shards merged offline)."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from ds_tp.export_checkpoint import export_checkpoint
from tests.ranks.harness import SHARP, losses, train

STEPS = ["--max-steps", "6", "--save-steps", "3", "--val-set-size", "0.02", "--eval-steps", "3"]
# What users run: AdamW with weight decay (HF Trainer's groups) and warm-up into a cosine decay.
ADAMW = ["--optimizer", "adamw_torch", "--lr-scheduler", "cosine", "--learning-rate", "1e-3", "--warmup-steps", "2",
         "--weight-decay", "0.3", "--micro-batch-size", "1", "--sequence-len", "64", "--logging-steps", "1",
         "--max-steps", "8"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One-process runs by global batch size (micro 1 x gas), each trained once per module."""
    runs = {}

    def get(global_batch: int):
        if global_batch not in runs:
            out = tmp_path_factory.mktemp(f"ref{global_batch}") / "run"
            rows = train(out, [*SHARP, *STEPS, "--dp-shard-size", "1", "--gradient-accumulation-steps",
                               str(global_batch)], 1)
            runs[global_batch] = out, losses(rows), norms(rows), evals(rows)
        return runs[global_batch]
    return get


def evals(rows) -> list:
    return [r["eval_loss"] for r in rows if "eval_loss" in r]


def norms(rows) -> list:
    return [r["grad_norm"] for r in rows if "loss" in r]


@pytest.fixture(autouse=True)
def small_export_shards(monkeypatch):
    """~1 MB model in 0.1 MB shards: every layout's export goes through the shard index."""
    monkeypatch.setenv("DS_TP_EXPORT_SHARD_MB", "0.1")


def weights(out):
    assert (out / "model.safetensors.index.json").is_file()
    return AutoModelForCausalLM.from_pretrained(out).state_dict()


def exported(checkpoint):
    """`ds-tp export` of a checkpoint, once per checkpoint."""
    out = checkpoint.parent / "exported-3"
    if not out.exists():
        export_checkpoint(checkpoint, out)
    return AutoModelForCausalLM.from_pretrained(out).state_dict()


# AutoTP's split: by output rows (column-parallel) or by input columns (row-parallel)
TP_SPLIT = {"self_attn.q_proj.weight": 0, "self_attn.k_proj.weight": 0, "self_attn.v_proj.weight": 0,
            "mlp.gate_proj.weight": 0, "mlp.up_proj.weight": 0, "self_attn.o_proj.weight": 1, "mlp.down_proj.weight": 1}


def assert_tp_sharded(checkpoint, tp: int, full: dict) -> None:
    """Each TP rank saved its own file holding its slice of every split weight (DeepSpeed's param_shapes under
    ZeRO, the module's tensors without): identical ranks computing the whole model would fail here."""
    files = sorted(checkpoint.glob("*mp_rank_*_model_states.pt"))
    assert sorted({f.name.split("mp_rank_")[1][:2] for f in files}) == [f"{r:02d}" for r in range(tp)], files
    for r in range(tp):
        state = torch.load(next(checkpoint.glob(f"*mp_rank_{r:02d}_model_states.pt")), map_location="cpu",
                           weights_only=False)
        shapes = ({k: tuple(v) for group in state.get("param_shapes") or [] for k, v in group.items()}
                  or {k: tuple(v.shape) for k, v in state["module"].items()})
        for layer in range(2):
            for suffix, dim in TP_SPLIT.items():
                name = f"model.layers.{layer}.{suffix}"
                want = list(full[name].shape)
                want[dim] //= tp
                assert shapes[name] == tuple(want), (r, name, shapes[name], want)


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("name, overrides, nproc", [
    ("dp_shard2", ["--dp-shard-size", "2", "--gradient-accumulation-steps", "1"], 2),
    ("tp2", ["--dp-shard-size", "1", "--tensor-parallel-size", "2", "--gradient-accumulation-steps", "2"], 2),
    ("cp2", ["--dp-shard-size", "1", "--context-parallel-size", "2", "--gradient-accumulation-steps", "2"], 2),
    ("tp2_dp_shard2", ["--dp-shard-size", "2", "--tensor-parallel-size", "2", "--gradient-accumulation-steps", "1"], 4),
    ("cp2_dp_shard2", ["--dp-shard-size", "2", "--context-parallel-size", "2", "--gradient-accumulation-steps", "1"], 4),
    ("tp2_cp2", ["--dp-shard-size", "1", "--tensor-parallel-size", "2", "--context-parallel-size", "2",
                 "--gradient-accumulation-steps", "2"], 4),
    ("hpz_rep2_shard2", ["--dp-shard-size", "2", "--dp-replicate-size", "2", "--gradient-accumulation-steps", "1"], 4),
])
def test_layout_matches_one_process(reference, tmp_path, name, overrides, nproc):
    out = tmp_path / name
    rows = train(out, [*SHARP, *STEPS, *overrides], nproc)
    got = losses(rows)
    plan = json.loads((out / "ds_tp" / "run.json").read_text())
    ref_out, ref_losses, ref_norms, ref_evals = reference(plan["global_batch"])
    assert len(got) == len(ref_losses) == 6
    diffs = [abs(a - b) for a, b in zip(got, ref_losses)]
    assert max(diffs) < 1e-5, (got, ref_losses)
    assert len(ref_evals) == 2 and evals(rows) == pytest.approx(ref_evals, abs=1e-5)  # evaluation shards too
    # clipping at 1.0 hides a gradient off by a constant factor from the losses; the norm before clipping does not
    pairs = [(a, b) for a, b in zip(norms(rows), ref_norms) if a is not None]
    assert pairs or "tp2" in name
    assert [a for a, _ in pairs] == pytest.approx([b for _, b in pairs], rel=1e-4)
    assert ref_losses[-1] < ref_losses[0]  # it trained
    assert max_diff(weights(out), weights(ref_out)) < 1e-4
    tp = plan["run"]["layout"]["tp"]
    assert tp == (2 if "tp2" in name else 1)
    if tp > 1:
        assert_tp_sharded(out / "checkpoint-3", tp, weights(ref_out))
    step3 = exported(out / "checkpoint-3")
    assert max_diff(step3, exported(ref_out / "checkpoint-3")) < 1e-4
    assert max_diff(step3, weights(out)) > 1e-3  # steps 4-6 moved the weights: the checkpoint is step 3's


@pytest.fixture(scope="module")
def adamw_reference(tmp_path_factory):
    """One process, global batch 2 (tests/ranks/test_vs_hf_trainer.py: one process equals HF Trainer)."""
    out = tmp_path_factory.mktemp("adamw_ref") / "one"
    return train(out, [*ADAMW, "--dp-shard-size", "1", "--gradient-accumulation-steps", "2"], 1)


@pytest.mark.parametrize("name, overrides, nproc", [
    ("dp_shard2", ["--dp-shard-size", "2", "--gradient-accumulation-steps", "1"], 2),
    ("tp2", ["--dp-shard-size", "1", "--tensor-parallel-size", "2", "--gradient-accumulation-steps", "2"], 2),
])
def test_adamw_decay_and_warmup_match_one_process(adamw_reference, tmp_path, name, overrides, nproc):
    """AdamW, weight decay 0.3 on HF Trainer's groups and a warm-up into cosine: ZeRO-3 partitions the two
    groups and AutoTP splits their weights, and the losses and rates stay those of one process."""
    got = train(tmp_path / name, [*ADAMW, *overrides], nproc)
    ref = adamw_reference
    assert [r["lr"] for r in got] == [r["lr"] for r in ref] and ref[0]["lr"] == 0.0 and ref[2]["lr"] == 1e-3
    assert losses(got) == pytest.approx(losses(ref), abs=1e-5)
    assert losses(ref)[-1] < losses(ref)[0]
