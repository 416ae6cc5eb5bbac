#!/usr/bin/env python
"""The family matrix of tests/ranks/test_families.py, written up: every builtin tiny family on dp_shard 2,
tp 2 and cp 2 against one process, with the attention each ran, how TP split it (the rank log's
sharding report for the first MLP's down projection) and each refusal's line.

    python scripts/family_matrix.py [--out docs/families.md]     # ~3 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def captured(fn, *args) -> str:
    """fn(*args) with this process's (and its spawned ranks') stdout sent to a file; the text."""
    with tempfile.TemporaryFile(mode="w+") as sink:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(sink.fileno(), 1)
        try:
            fn(*args)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        return sink.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "families.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from ds_tp.errors import UserError
    from ds_tp.runfiles import PreparedRun
    from tests.ranks.hf_reference import ds_tp_rows
    from tests.ranks.test_families import FAMILIES, prepare_cells, train_cells

    work = Path(tempfile.mkdtemp(prefix="ds-tp-families-"))
    cells = prepare_cells(work)
    logs: dict = {}
    train_cells(cells, around=lambda layout, fn: logs.__setitem__(layout, captured(fn)))

    rows, trained, total = [], 0, 0
    for family in FAMILIES:
        ref = cells[family, "one"]
        plan = PreparedRun.read(ref)
        shape, run = plan.resolved.model, plan.resolved
        kind = f"{shape.model_type}" + (", tied" if shape.tied else "") + \
            (f", MoE {shape.experts} experts" if shape.experts else "")
        ref_losses = [r["loss"] for r in ds_tp_rows(ref)[0]]
        out = [f"`{family}`", kind, run.attention or "sdpa"]
        for layout in ("dp_shard2", "tp2", "cp2"):
            total += 1
            cell = cells[family, layout]
            if isinstance(cell, UserError):
                out.append("refused before launch: " + str(cell.problems[0].message).replace("|", "/"))
                continue
            try:
                losses = [r["loss"] for r in ds_tp_rows(cell)[0]]
            except AssertionError as exc:  # a failure after launch: a bug the test reports too
                out.append("FAILED after launch: " + str(exc).splitlines()[-1][:120])
                continue
            diff = max(abs(a - b) for a, b in zip(losses, ref_losses))
            text = f"trains, max loss diff {diff:.1e}" + (" (equal)" if diff < 1e-5 else " (DIFFERS)")
            trained += diff < 1e-5
            if layout == "tp2":
                chunk = logs["tp2"].split(f"saved the model to {PreparedRun.read(cell).output_dir}")[0]
                chunk = chunk.rsplit("saved the model to", 1)[-1]
                split = re.findall(r"rank 0 \S*layers\.0\.mlp\.down_proj\S*weight: global (\[[^]]*\]), on TP rank "
                                   r"0/2 (\[[^]]*\])", chunk)
                if split:
                    text += f"; down_proj {split[0][0]} -> {split[0][1]} per rank"
            out.append(text)
        rows.append("| " + " | ".join(out) + " |")

    lines = [
        "# Model families on every layout",
        "",
        "`python scripts/family_matrix.py` (the matrix of `tests/ranks/test_families.py`, written up): a tiny random",
        "model of each family (`base_model: builtin:tiny-<family>`, two layers, hidden 64, built from the family's",
        "transformers config, the quickstart's tokenizer) trains 4 SGD steps on one process and on dp_shard 2,",
        "tp 2 and cp 2 (2 CPU ranks each, the quickstart's data). \"equal\" = every step's loss within 1e-5 of",
        "one process (the test also compares gradient norms). The attention column is what ds-tp chose for the",
        "family's class before launch (`ds_tp/model_config.py: choose_attention`); TP follows the model's HF",
        "tp_plan or ds-tp's own layer specs (`translators/family_rules.py`: phi3, glm4, olmo2).",
        "",
        f"**{trained} of {total} cells train equal to one process; the rest are refused before any rank starts.**",
        "",
        "| family | model_type | attention | dp_shard 2 | tp 2 | cp 2 |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
