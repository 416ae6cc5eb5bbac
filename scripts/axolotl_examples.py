#!/usr/bin/env python
"""validate + translate every YAML config under an Axolotl checkout's examples/ (path as argument),
run from that checkout's root so `deepspeed: deepspeed_configs/...` resolves as it would for a user.
Prints one line per config: ok | refused (first reason) | crash, then a count line. Not run in CI
(it has no network to fetch the checkout); its output for a given Axolotl commit is kept in
docs/axolotl-examples.md.

    python scripts/axolotl_examples.py /path/to/axolotl [--markdown]
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def check(path: Path) -> tuple[str, str]:
    from ds_tp.config import load_config
    from ds_tp.device import cpu_facts
    from ds_tp.ds_config import build_ds_config
    from ds_tp.errors import UserError

    try:
        cfg = load_config(path, (), None, (), gpu_count=8)
        build_ds_config(cfg, cpu_facts("axolotl_examples.py"))
        return "ok", ""
    except UserError as exc:
        first = exc.problems[0]
        more = f" (+{len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        text = f"{first.key}: {first.message}" if first.key else first.message
        return "refused", text + more
    except Exception as exc:  # a crash is a ds-tp bug: show where
        return "crash", f"{type(exc).__name__}: {exc} @ {traceback.extract_tb(exc.__traceback__)[-1]}"


def kind(path: Path) -> str:
    """What the config trains, read from its keys the way a reader of the file would."""
    import yaml
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return "not yaml"
    if not isinstance(raw, dict):
        return "not a config"
    if "base_model" not in raw:
        return "cloud" if {"provider", "gpu"} & set(raw) else "not a config"
    if raw.get("rl"):
        return "preference"
    if raw.get("processor_type"):
        return "multimodal"
    if raw.get("adapter") or raw.get("load_in_4bit") or raw.get("load_in_8bit"):
        return "adapter"
    if raw.get("pretraining_dataset") or raw.get("streaming"):
        return "pretraining"
    return "full-ft"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkout")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    checkout = Path(args.checkout).resolve()
    os.chdir(checkout)
    configs = sorted(p for p in (checkout / "examples").rglob("*.y*ml") if p.is_file())
    counts: Counter = Counter()
    by_kind: Counter = Counter()
    for path in configs:
        state, why = check(path.relative_to(checkout))
        what = kind(path)
        counts[state] += 1
        by_kind[(what, state)] += 1
        rel = path.relative_to(checkout)
        print(f"| {rel} | {what} | {state} | {why.replace('|', '/')} |" if args.markdown
              else f"{state:8} {what:11} {rel}  {why}")
    print(f"\n{len(configs)} configs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for what in sorted({w for w, _ in by_kind}):
        print(f"  {what}: " + ", ".join(f"{n} {s}" for (w, s), n in sorted(by_kind.items()) if w == what))
    return 0


if __name__ == "__main__":
    sys.exit(main())
