"""Preference tuning on every layout: per-step DPO losses and reward figures equal to one process (SGD, 6 steps)
for a full fine-tune on dp_shard 2 (ZeRO-3, the frozen reference partitioned too) and tp 2 (the reference
AutoTP-split), and for LoRA (reference: the adapter disabled) on dp_shard 2 and cp 2 (Ulysses: each sequence's
log-probs summed across shards), with WPO and LD-DPO too; precomputed reference log-probs equal the live
reference; a DPO checkpoint resumes bitwise and the exported model loads with from_pretrained; ORPO, SimPO and
KTO run on 2 ranks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import EXAMPLES
from tests.ranks.harness import SHARP, losses, read_metrics, train

# SGD at a constant rate, 6 steps, an eval after steps 3 and 6, a checkpoint at 3; the live reference
STEPS = [*SHARP, "--max-steps", "6", "--learning-rate", "0.5", "--val-set-size", "0.05", "--eval-steps", "3",
         "--save-steps", "3", "--no-precompute-ref-log-probs"]
FIGURES = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")
EVAL_FIGURES = ("eval_loss", "eval_rewards/chosen", "eval_rewards/rejected", "eval_logps/chosen")


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict:
    """quickstart-dpo.yaml on its first 200 pairs: {"full", "lora", "orpo", "kto"} -> path (KTO and ORPO with the
    same pairs in their own row formats)."""
    folder = tmp_path_factory.mktemp("configs")
    pairs = (EXAMPLES / "quickstart/data/preferences.jsonl").read_text().splitlines()[:200]
    (folder / "pairs.jsonl").write_text("\n".join(pairs) + "\n")
    kto = []
    for i, line in enumerate(pairs):  # KTO: each pair's chosen (desirable) or rejected (undesirable) answer
        row = json.loads(line)
        answer = row["chosen" if i % 2 else "rejected"]
        kto.append(json.dumps({"prompt": row["messages"][0]["content"], "completion": answer["content"],
                               "label": bool(i % 2)}))
    (folder / "kto.jsonl").write_text("\n".join(kto) + "\n")
    orpo = [json.dumps({side: [row["messages"][0], row[side]] for side in ("chosen", "rejected")})
            for row in map(json.loads, pairs)]  # chat_template.argilla: whole conversations
    (folder / "orpo.jsonl").write_text("\n".join(orpo) + "\n")
    text = (EXAMPLES / "quickstart-dpo.yaml").read_text().replace(
        "path: examples/quickstart/data/preferences.jsonl", f"path: {folder / 'pairs.jsonl'}")
    out = {"full": folder / "full.yaml", "lora": folder / "lora.yaml", "kto": folder / "kto.yaml"}
    out["full"].write_text(text)
    out["lora"].write_text(text + "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_dropout: 0.0\n"
                                  "lora_target_linear: true\n")
    kto_text = text.replace("rl: dpo", "rl: kto").split("datasets:")[0] + (
        f"datasets:\n  - path: {folder / 'kto.jsonl'}\n    type:\n      field_prompt: prompt\n"
        "      field_completion: completion\n      field_label: label\n"
        "chat_template: tokenizer_default\ndataset_prepared_path: ./outputs/quickstart-prepared\n"
        "sequence_len: 64\nval_set_size: 0.05\ndp_shard_size: 2\noutput_dir: ./outputs/kto\nseed: 42\n")
    out["kto"].write_text(kto_text)
    rng = __import__("random").Random(0)  # long answers of unequal length: they straddle the CP shards
    words = [{"messages": [{"role": "user", "content": "Say"}],
              "chosen": {"role": "assistant", "content": "".join(rng.choices("abcdefgh", k=rng.randint(20, 40)))},
              "rejected": {"role": "assistant", "content": "".join(rng.choices("abcdefgh", k=rng.randint(10, 40)))}}
             for _ in range(60)]
    (folder / "long.jsonl").write_text("".join(json.dumps(w) + "\n" for w in words))
    out["lora-long"] = folder / "lora-long.yaml"
    out["lora-long"].write_text(out["lora"].read_text().replace(str(folder / "pairs.jsonl"), str(folder / "long.jsonl")))
    out["orpo"] = folder / "orpo.yaml"
    out["orpo"].write_text(text.replace("rl: dpo", "rl: orpo").replace(str(folder / "pairs.jsonl"), str(folder / "orpo.jsonl"))
                           .replace("type: chat_template.default", "type: chat_template.argilla"))
    return out


def figures(rows: list[dict], names=FIGURES) -> list[list[float]]:
    return [[r[n] for n in names] for r in rows if names[0] in r]


def assert_close(got: list[list[float]], want: list[list[float]], tol: float = 1e-5) -> None:
    assert len(got) == len(want) and got, (got, want)
    for step, (a, b) in enumerate(zip(got, want)):
        assert a == pytest.approx(b, abs=tol, rel=1e-6), (step, a, b)  # rel: log-probs of ~100 in fp32


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, configs):
    """One-process runs by (config, global batch, extra flags), each trained once per module."""
    runs = {}

    def get(kind: str, global_batch: int, extra: tuple = ()):
        key = (kind, global_batch, extra)
        if key not in runs:
            out = tmp_path_factory.mktemp(f"{kind}{global_batch}") / "run"
            rows = train(out, [*STEPS, *extra, "--dp-shard-size", "1", "--gradient-accumulation-steps",
                               str(global_batch)], 1, config=configs[kind])
            runs[key] = out, rows
        return runs[key]
    return get


LAYOUTS = [
    ("full", "dp_shard2", ["--dp-shard-size", "2", "--gradient-accumulation-steps", "1"], 2),
    ("full", "tp2", ["--dp-shard-size", "1", "--tensor-parallel-size", "2", "--gradient-accumulation-steps", "2"], 2),
    ("lora", "dp_shard2", ["--dp-shard-size", "2", "--gradient-accumulation-steps", "1"], 2),
    ("lora", "cp2", ["--dp-shard-size", "1", "--context-parallel-size", "2", "--gradient-accumulation-steps", "2"], 2),
]


@pytest.mark.parametrize("kind, name, overrides, nproc", LAYOUTS, ids=[f"{k}-{n}" for k, n, _, _ in LAYOUTS])
def test_dpo_layout_matches_one_process(one_process, configs, tmp_path, capfd, kind, name, overrides, nproc):
    out = tmp_path / name
    rows = train(out, [*STEPS, *overrides], nproc, config=configs[kind])
    ref_out, ref_rows = one_process(kind, 2)
    assert_close(figures(rows), figures(ref_rows))
    assert_close(figures(rows, EVAL_FIGURES), figures(ref_rows, EVAL_FIGURES))
    assert [r["rewards/accuracies"] for r in rows if "loss" in r] == \
        [r["rewards/accuracies"] for r in ref_rows if "loss" in r]
    trained = figures(ref_rows)  # step 1 runs at the reference (rewards 0); then the policy moves away from it
    assert trained[0][1:3] == [0.0, 0.0] and all(abs(r[1]) > 1e-4 for r in trained[1:]), trained
    log = capfd.readouterr().out
    reference = {"full": "frozen copy of the starting model", "lora": "the adapter disabled"}[kind]
    assert reference in log
    if kind == "full" and name == "dp_shard2":
        assert "reference model built: ZeRO stage 3, no optimizer" in log


def test_dpo_weighting_and_length_desensitization_on_cp2(one_process, configs, tmp_path):
    """dpo_use_weighting (WPO) and dpo_ld_alpha (LD-DPO) with LoRA on cp 2, on answers of 10-40 tokens that
    straddle the two sequence shards: each sequence's WPO sum and its LD weights (tokens past the pair's shorter
    answer, counted across the CP shards) equal one process's; both change the loss from plain DPO's."""
    extra = ("--dpo-use-weighting", "--dpo-ld-alpha", "0.5")
    layout = ["--dp-shard-size", "1", "--context-parallel-size", "2", "--gradient-accumulation-steps", "2"]
    rows = train(tmp_path / "cp2", [*STEPS, *extra, *layout], 2, config=configs["lora-long"])
    _, want = one_process("lora-long", 2, extra)
    _, plain = one_process("lora-long", 2)
    assert_close(figures(rows), figures(want))
    assert_close(figures(rows, EVAL_FIGURES), figures(want, EVAL_FIGURES))
    assert abs(figures(want)[0][0] - figures(plain)[0][0]) > 1e-3  # WPO weights the very first step's loss
    # LD-DPO weights the longer answer's tokens past the shorter one's count: logps/chosen or logps/rejected move
    assert max(abs(a - b) for a, b in zip(figures(want)[0][4:6], figures(plain)[0][4:6])) > 1e-3


def test_precomputed_reference_equals_the_live_one(one_process, configs):
    """precompute_ref_log_probs: the log-probs computed once before step 1, cached with the prepared data, give
    the live reference's losses; a second run reads the cache."""
    _, live = one_process("full", 2)
    out, cached = one_process("full", 2, ("--precompute-ref-log-probs",))
    assert_close(figures(cached), figures(live))
    assert_close(figures(cached, EVAL_FIGURES), figures(live, EVAL_FIGURES))
    plan = json.loads((out / "ds_tp" / "run.json").read_text())
    assert plan["run"]["preference"]["reference"] == "precomputed"
    [cache] = Path(plan["prepared_path"]).glob("reference-*.npz")
    import numpy as np
    with np.load(cache) as table:
        assert table["train"].shape[1] == 2 and table["eval"].shape[1] == 2


def test_resume_from_a_dpo_checkpoint_is_bitwise(one_process, configs, tmp_path):
    """Resumed at step 3 on ZeRO-3 (the frozen reference rebuilt from the base): steps 4-6 equal the
    uninterrupted run's bit for bit, and the exported model loads with from_pretrained."""
    from transformers import AutoModelForCausalLM

    layout = ["--dp-shard-size", "2", "--gradient-accumulation-steps", "1"]
    first = train(tmp_path / "A", [*STEPS, *layout], 2, config=configs["full"])
    resumed = train(tmp_path / "B", [*STEPS, *layout, "--resume-from-checkpoint", str(tmp_path / "A/checkpoint-3")],
                    2, config=configs["full"])
    assert figures(resumed) == figures(first)[3:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "B")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "A")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("method", ["orpo", "simpo", "kto"])
def test_other_methods_train_on_two_ranks(configs, tmp_path, method):
    """ORPO and SimPO (no reference) and KTO (a frozen reference, its KL term all-reduced) on ZeRO-3 over 2 ranks:
    ORPO's and SimPO's losses fall over 6 SGD steps; KTO's first step runs at the reference (loss 1 - sigmoid(0))
    and the later ones move away from it; TRL's figures are logged."""
    kind = {"orpo": "orpo", "simpo": "full", "kto": "kto"}[method]
    micro = ["--micro-batch-size", "2"] if method == "kto" else []  # KTO's KL pairs come from one micro-batch
    rows = train(tmp_path / method, [*STEPS, "--rl", method, "--learning-rate", "0.2", *micro], 2,
                 config=configs[kind])
    trained = losses(rows)
    assert len(trained) == 6, trained
    if method == "kto":
        assert trained[0] == pytest.approx(0.5, abs=1e-7) and all(abs(x - 0.5) > 1e-5 for x in trained[1:]), trained
    else:
        assert trained[-1] < trained[0], trained
    logged = [r for r in rows if "loss" in r][-1]
    wanted = {"orpo": ("nll_loss", "log_odds_ratio", "rewards/accuracies"), "simpo": ("nll_loss", "rewards/margins"),
              "kto": ("kl", "rewards/chosen", "rewards/rejected")}[method]
    assert all(name in logged for name in wanted), logged
    assert read_metrics(tmp_path / method)[-1].get("eval_loss") is not None
