#!/usr/bin/env python
"""Check a finished examples/quickstart-dpo.yaml run on held-out pairs no run trains on
(examples/quickstart/data/preferences-heldout.jsonl): TRL's reward accuracy (the trained model's
implicit reward beta * log(pi / pi_ref) higher for the right answer than for the wrong one) must reach
ACCURACY_FLOOR, and the share of pairs whose right answer the model itself finds more likely must rise
from the untrained model's (about chance). Prints the figures, by task too; exits 1 if a check fails.

    python scripts/check_quickstart_dpo.py [outputs/quickstart-dpo]
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from ds_tp.assets import resolve_builtin_model  # noqa: E402
from ds_tp.data.preference import preference_formatter  # noqa: E402
from ds_tp.train.preference_loss import sequence_logps  # noqa: E402

HELDOUT = ROOT / "examples/quickstart/data/preferences-heldout.jsonl"
# Held-out reward accuracy on a 2-core CPU: 0.73 after training (untrained: 0, every reward 0); the model
# prefers the right answer in 0.48 of the pairs before, 0.73 after (parity 0.94, letter counts 1.00).
ACCURACY_FLOOR = 0.65


def pair_logps(model, example: dict) -> tuple[float, float]:
    """log p(chosen | prompt), log p(rejected | prompt), as the loop scores them."""
    out = []
    for answer in (example["chosen_ids"], example["rejected_ids"]):
        ids = torch.tensor([example["prompt_ids"] + answer])
        shift = torch.full_like(ids, -100)
        shift[0, len(example["prompt_ids"]) - 1:-1] = torch.tensor(answer)
        with torch.no_grad():
            out.append(float(sequence_logps(model(input_ids=ids).logits, shift)[0][0]))
    return out[0], out[1]


def task(row: dict) -> str:
    return row["messages"][0]["content"].split("\n")[0]


def figures(out: Path) -> dict:
    """Held-out reward accuracy, the share of pairs whose right answer each model prefers, by task, and the
    run's own eval_rewards/accuracies at its first and last evaluation."""
    config = json.loads((out / "ds_tp" / "run.json").read_text())["config"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    entry = {**config["datasets"][0], "path": str(HELDOUT)}
    formatter = preference_formatter(entry, 0, config, tokenizer)
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines()]
    base = AutoModelForCausalLM.from_pretrained(resolve_builtin_model("builtin:tiny-llama")).eval()
    trained = AutoModelForCausalLM.from_pretrained(out).eval()
    counts: dict = defaultdict(lambda: [0, 0, 0, 0])  # task -> [pairs, reward right, base prefers, trained prefers]
    for row in rows:
        [example] = formatter(row)
        (bc, br), (tc, tr) = pair_logps(base, example), pair_logps(trained, example)
        c = counts[task(row)]
        c[0] += 1
        c[1] += (tc - bc) > (tr - br)
        c[2] += bc > br
        c[3] += tc > tr
    total = [sum(c[i] for c in counts.values()) for i in range(4)]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_rewards/accuracies"] for r in metrics if "eval_rewards/accuracies" in r]
    return {"pairs": total[0], "accuracy": total[1] / total[0], "prefers_before": total[2] / total[0],
            "prefers_after": total[3] / total[0], "by_task": {k: v for k, v in sorted(counts.items())},
            "eval_accuracy_first": evals[0], "eval_accuracy_last": evals[-1]}


def main(out: Path) -> int:
    f = figures(out)
    for name, c in f["by_task"].items():
        print(f"  {name:20s} {c[0]:3d} pairs: reward accuracy {c[1] / c[0]:.2f}; "
              f"prefers the right answer {c[2] / c[0]:.2f} -> {c[3] / c[0]:.2f}")
    print(f"quickstart-dpo: held-out reward accuracy {f['accuracy']:.2f} ({f['pairs']} pairs; the untrained model: 0, "
          f"no reward); the model prefers the right answer in {f['prefers_before']:.2f} of pairs before -> "
          f"{f['prefers_after']:.2f} after; the run's eval_rewards/accuracies {f['eval_accuracy_first']:.2f} at its "
          f"first evaluation -> {f['eval_accuracy_last']:.2f} at its last")
    ok = f["accuracy"] >= ACCURACY_FLOOR and f["prefers_after"] > f["prefers_before"]
    print("quickstart-dpo: OK" if ok else f"quickstart-dpo: FAILED (reward accuracy must reach {ACCURACY_FLOOR})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/quickstart-dpo")))
