#!/usr/bin/env python
"""Rewrite examples/golden/*.json: each example's DeepSpeed JSON for its world size (worlds.json),
translated with the facts of a machine without a GPU so the files do not depend on where they run.
Review the diff: the golden tests exist to make every change to a translation visible."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ds_tp.config import load_config  # noqa: E402
from ds_tp.device import cpu_facts  # noqa: E402
from ds_tp.ds_config import build_ds_config  # noqa: E402


def golden_path(example: str) -> Path:
    return ROOT / "examples" / "golden" / (example.replace("/", "__").removesuffix(".yaml") + ".json")


def translate_example(example: str, world: int) -> dict:
    cfg = load_config(ROOT / "examples" / example, (), world)
    translation, _ = build_ds_config(cfg, cpu_facts("golden files: no GPU"))
    return translation.config


def main() -> None:
    worlds = json.loads((ROOT / "examples" / "golden" / "worlds.json").read_text())
    for example, world in worlds.items():
        path = golden_path(example)
        path.write_text(json.dumps(translate_example(example, world), indent=2, sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(ROOT)} (world {world})")


if __name__ == "__main__":
    main()
