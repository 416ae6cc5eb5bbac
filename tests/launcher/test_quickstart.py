"""The README's main job: the embedded quickstart, default config, real deepspeed launcher, 2 CPU ranks."""
from scripts.check_quickstart import ACCURACY_FLOOR, figures
from tests.conftest import EXAMPLES
from tests.launcher.test_train_cli import ds_tp


def test_quickstart_learns(tmp_path):
    out = tmp_path / "quickstart"
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", "--output-dir", out, "--dataset-prepared-path",
                      tmp_path / "prep", timeout=600)
    assert code == 0, log[-4000:]
    assert "dp_replicate(1) * dp_shard(2) * tp(1) * cp(1) = 2" in log and "ZeRO stage 3" in log
    f = figures(out)
    assert f["last_loss"] < 0.8 * f["first_loss"], f
    assert f["accuracy_before"] == 0 and f["accuracy_after"] >= ACCURACY_FLOOR["full"], f
    assert (out / "training_curves.png").is_file() and "ds-tp: curves:" in log and "training time" in log
    # `ds-tp inference` answers held-out tasks as the check's greedy decoding does: right where that is right
    right = held_out_answered_right(out)
    assert len(right) >= 2, right
    for row in right[:2]:
        code, answer = ds_tp("inference", EXAMPLES / "quickstart.yaml", "--output-dir", out, "--prompt",
                             row["instruction"], "--input", row["input"], "--max-new-tokens", "8", stderr=False)
        assert code == 0 and answer.strip() == row["output"], (row, answer)


def held_out_answered_right(out) -> list[dict]:
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ds_tp.assets import greedy_accuracy
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    rows = [json.loads(x) for x in (EXAMPLES / "quickstart/data/heldout.jsonl").read_text().splitlines()]
    return [r for r in rows if greedy_accuracy(model, tokenizer, [r]) == 1.0]


def test_quickstart_lora_learns_saves_an_adapter_and_merges(tmp_path):
    """examples/quickstart-lora.yaml through the real launcher (ZeRO-3, 2 ranks): it learns, PeftModel loads
    the adapter it saves, and `ds-tp merge-lora` writes a model from_pretrained loads, equal to base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ds_tp.assets import resolve_builtin_model

    out = tmp_path / "lora"
    code, log = ds_tp("train", EXAMPLES / "quickstart-lora.yaml", "--output-dir", out, "--dataset-prepared-path",
                      tmp_path / "prep", timeout=600)
    assert code == 0, log[-4000:]
    assert "adapter lora: " in log and "ZeRO stage 3" in log
    f = figures(out)  # loads the adapter with PeftModel.from_pretrained over the base
    assert f["last_loss"] < 0.8 * f["first_loss"], f
    assert f["accuracy_before"] == 0 and f["accuracy_after"] >= ACCURACY_FLOOR["lora"], f
    code, log = ds_tp("merge-lora", EXAMPLES / "quickstart-lora.yaml", "--output-dir", out, timeout=300)
    assert code == 0, log[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(resolve_builtin_model("builtin:tiny-llama"))
    ids = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, out).eval()(input_ids=ids).logits
        assert (merged(input_ids=ids).logits - expected).abs().max().item() < 1e-3  # fp32 rounding of W + BA


def test_quickstart_dpo_raises_held_out_reward_accuracy(tmp_path):
    """examples/quickstart-dpo.yaml through the real launcher (ZeRO-3, 2 ranks, reference log-probs precomputed):
    on 250 held-out pairs the trained model's reward accuracy reaches the floor (untrained: no reward at all)
    and it prefers the right answer more often than the untrained model (about chance)."""
    from scripts.check_quickstart_dpo import ACCURACY_FLOOR as DPO_FLOOR
    from scripts.check_quickstart_dpo import figures as dpo_figures

    out = tmp_path / "dpo"
    code, log = ds_tp("train", EXAMPLES / "quickstart-dpo.yaml", "--output-dir", out, "--dataset-prepared-path",
                      tmp_path / "prep", timeout=600)
    assert code == 0, log[-4000:]
    assert "rl: dpo (TRL's DPOTrainer loss)" in log and "reference log-probs of 2000 rows computed once" in log
    f = dpo_figures(out)
    assert f["accuracy"] >= DPO_FLOOR and f["prefers_after"] > f["prefers_before"] + 0.1, f
    assert 0.35 < f["prefers_before"] < 0.65, f  # the untrained model: about chance
