#!/usr/bin/env python
"""Rebuild the quickstart assets: examples/quickstart/data/{tasks,heldout,preferences,preferences-heldout}.jsonl and the tiny
Llama model + tokenizer (default: the folder `base_model: builtin:tiny-llama` resolves to).

    python scripts/make_quickstart_assets.py [--out DIR] [--data DIR] [--seed N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ds_tp.assets import (  # noqa: E402
    BUILTIN_MODELS,
    HELDOUT_SEED,
    QUICKSTART_SEED,
    assets_home,
    build_tiny_llama,
    generate_preference_rows,
    generate_quickstart_rows,
)

TRAIN_ROWS = 2000
HELDOUT_ROWS = 64
PREFERENCE_ROWS = 2000
HELDOUT_PAIRS = 250


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def replace_model_folder(out: Path, seed: int) -> None:
    """Build next to `out`, then swap it in; refuses to replace a folder that is not a model folder."""
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise SystemExit(f"{out} exists and is not a model folder; pick another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        build_tiny_llama(scratch / "model", seed=seed)
        if out.exists():
            os.rename(out, scratch / "old")
        os.rename(scratch / "model", out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=assets_home() / BUILTIN_MODELS["tiny-llama"],
                        help="model folder to (re)build (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=REPO / "examples" / "quickstart" / "data",
                        help="where tasks.jsonl and heldout.jsonl go (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    args = parser.parse_args(argv)

    train = generate_quickstart_rows(TRAIN_ROWS, QUICKSTART_SEED)
    seen = {(row["instruction"], row["input"]) for row in train}
    # Held-out rows: same tasks, another seed, and none that also appear in the training rows.
    heldout = [row for row in generate_quickstart_rows(4 * HELDOUT_ROWS, HELDOUT_SEED)
               if (row["instruction"], row["input"]) not in seen][:HELDOUT_ROWS]
    write_jsonl(args.data / "tasks.jsonl", train)
    write_jsonl(args.data / "heldout.jsonl", heldout)
    # Preference pairs (examples/quickstart-dpo.yaml): the same tasks, a right and a wrong answer each
    pairs = generate_preference_rows(PREFERENCE_ROWS, QUICKSTART_SEED + 1)
    asked = {row["messages"][0]["content"] for row in pairs}
    heldout_pairs = [row for row in generate_preference_rows(4 * HELDOUT_PAIRS, HELDOUT_SEED + 1)
                     if row["messages"][0]["content"] not in asked][:HELDOUT_PAIRS]
    write_jsonl(args.data / "preferences.jsonl", pairs)
    write_jsonl(args.data / "preferences-heldout.jsonl", heldout_pairs)
    replace_model_folder(args.out, args.seed)
    print(f"wrote {len(train)} + {len(heldout)} rows to {args.data} and the tiny Llama to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
