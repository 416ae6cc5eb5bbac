#!/usr/bin/env python
"""Check a finished quickstart run: the loss fell below 80% of its start, the saved model loads with
from_pretrained (an adapter run's: PeftModel.from_pretrained over the base), and it answers at least
ACCURACY_FLOOR of the held-out tasks right (the untrained model: none). Prints the figures; exits 1 if a check fails."""
import json
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from ds_tp.assets import greedy_accuracy, resolve_builtin_model

ROOT = Path(__file__).resolve().parents[1]
# Held-out greedy accuracy (64 tasks no run trains on), measured on a 2-core CPU: full fine-tune 52% (33/64),
# LoRA 31% (20/64), the untrained model 0%. The floors leave room for other machines' rounding.
ACCURACY_FLOOR = {"full": 0.4, "lora": 0.2}


def figures(out: Path) -> dict:
    """First/last logged loss and held-out greedy accuracy before/after training."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    heldout = [json.loads(line) for line in (ROOT / "examples/quickstart/data/heldout.jsonl").read_text().splitlines()]
    base = resolve_builtin_model("builtin:tiny-llama")
    if (out / "adapter_config.json").is_file():
        from peft import PeftModel
        trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    else:
        trained = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    untrained = AutoModelForCausalLM.from_pretrained(base)
    return {"first_loss": losses[0], "last_loss": losses[-1], "tasks": len(heldout),
            "accuracy_before": greedy_accuracy(untrained, tokenizer, heldout),
            "accuracy_after": greedy_accuracy(trained, tokenizer, heldout)}


def main(out: Path) -> int:
    f = figures(out)
    losses, before, after, heldout = [f["first_loss"], f["last_loss"]], f["accuracy_before"], f["accuracy_after"], \
        range(f["tasks"])
    ratio = losses[-1] / losses[0]
    print(f"quickstart: loss {losses[0]:.3f} -> {losses[-1]:.3f} ({100 * ratio:.0f}% of the first logged step); "
          f"held-out greedy accuracy {100 * before:.0f}% before -> {100 * after:.0f}% after ({len(heldout)} tasks)")
    floor = ACCURACY_FLOOR["lora" if (out / "adapter_config.json").is_file() else "full"]
    ok = ratio < 0.8 and after >= floor and after > before
    print("quickstart: OK" if ok else f"quickstart: FAILED (loss must fall below 80% and accuracy reach {floor:.0%})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/quickstart")))
