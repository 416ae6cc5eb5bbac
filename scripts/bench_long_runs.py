"""Whole `ds-tp train` runs for scripts/bench_long.py: memory and speed of long rows on CPU ranks."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "plain": {},
    "long": {"gradient_checkpointing": True, "tiled_mlp": True, "chunked_cross_entropy": True},
}
BASELINE_T = 256  # the fixed part (interpreter, torch, DeepSpeed, model, optimizer): the same run at this T


def _documents(path: Path, length: int, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with path.open("w") as f:
        for _ in range(count):  # the builtin tokenizer is one token per character (plus BOS/EOS)
            words = [("".join(rng.choice(letters) for _ in range(rng.randint(2, 7)))) for _ in range(length // 5)]
            f.write(json.dumps({"text": " ".join(words)[: max(length - 3, 8)]}) + "\n")


def run_once(work: Path, length: int, packed: bool, layout: dict, variant: str, steps: int = 3,
             extra: dict | None = None) -> dict:
    """One `ds-tp train` of `steps` rows of `length` tokens; figures from metrics.jsonl."""
    world = math.prod(layout.values())
    data = work / f"docs-{length}-{int(packed)}.jsonl"
    doc = max(length // 8, 32) if packed else length
    if not data.exists():
        _documents(data, doc, (steps + 1) * (length // doc + 1) * max(1, world // layout.get("cp", 1)) + 4)
    name = f"{variant}-{length}-{'p' if packed else 'u'}-" + "-".join(f"{k}{v}" for k, v in layout.items())
    cfg = {
        "base_model": "builtin:tiny-llama", "datasets": [{"path": str(data), "type": "completion"}],
        "dataset_prepared_path": str(work / f"prepared-{name}"), "output_dir": str(work / name),
        "sequence_len": length, "sample_packing": packed, "micro_batch_size": 1, "gradient_accumulation_steps": 1,
        "max_steps": steps, "learning_rate": 1e-3, "optimizer": "adamw_torch", "lr_scheduler": "constant",
        "logging_steps": 1, "bf16": False, "val_set_size": 0, "seed": 7,
        "dp_shard_size": layout.get("dp_shard", 1), "tensor_parallel_size": layout.get("tp", 1),
        "context_parallel_size": layout.get("cp", 1), **VARIANTS[variant], **(extra or {}),
    }
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))  # YAML is a superset of JSON
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "ds_tp.cli", "train", str(path), "--num-processes", str(world)],
                         capture_output=True, text=True, timeout=3600, cwd=work, env=env)
    if out.returncode != 0:
        return {"T": length, "failed": (out.stdout + out.stderr).strip().splitlines()[-3:]}
    rows = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if "loss" in r]
    return {"T": length, "packed": packed, "variant": variant, "layout": layout,
            "peak_gib": max(r.get("peak_mem_gib") or 0 for r in steps_rows),
            "tokens_per_s": steps_rows[-1].get("tokens_per_s"), "losses": [r["loss"] for r in steps_rows]}


def exponent(points: list[tuple[int, float]]) -> float | None:
    pts = [(math.log(t), math.log(m)) for t, m in points if t >= 4096 and m > 0]
    if len(pts) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def whole_runs(lengths: list[int], cps: list[int], packings: list[str], variants: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-long-"))
    table, fits = [], {}
    for cp in cps:
        for packing in packings:
            for variant in variants:
                packed = packing == "packed"
                base = run_once(work, BASELINE_T, packed, {"cp": cp}, variant)
                series = []
                for length in lengths:
                    row = run_once(work, length, packed, {"cp": cp}, variant)
                    if "failed" in row:
                        print(f"cp {cp} {packing} {variant} T={length}: failed: {row['failed']}", flush=True)
                        continue
                    row["above_base_gib"] = row["peak_gib"] - base.get("peak_gib", 0.0)
                    table.append(row)
                    series.append((length, row["above_base_gib"]))
                    print(f"cp {cp}  {packing:<8} {variant:<5} T {length:>6}  peak {row['peak_gib']:6.3f} GiB  "
                          f"above T={BASELINE_T} {row['above_base_gib']:6.3f} GiB  {row['tokens_per_s'] or 0:8.0f} tok/s"
                          f"  losses {[round(x, 4) for x in row['losses']]}", flush=True)
                key = f"cp{cp}/{packing}/{variant}"
                fits[key] = exponent(series)
                print(f"{key}: memory above T={BASELINE_T} ~ T^{fits[key]:.2f} (T >= 4K)" if fits[key] is not None
                      else f"{key}: too few points", flush=True)
    return {"rows": table, "exponents": fits}


def scenario3(length: int = 16384) -> dict:
    """The card's scenario 3 on this machine: dp_shard 2 x tp 2 x cp 2 = 8 CPU ranks, 16K packed tokens."""
    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    layout = {"dp_shard": 2, "tp": 2, "cp": 2}
    out = {}
    for variant in ("plain", "long"):  # long: 2 MLP tiles, Axolotl's rule for a 4096-wide model at 16K / cp 2
        row = run_once(work, length, True, layout, variant, extra={"tiled_mlp_num_shards": 2} if variant == "long" else {})
        out[variant] = row
        print(f"scenario 3 ({variant}): {row}", flush=True)
    return out
