#!/usr/bin/env python
"""Long-context memory of ds-tp against sequence length T.

    python scripts/bench_long.py                     # whole runs: cp 1 and cp 2, packed and unpacked,
                                                     # plain and long (the memory features), 4K..32K; ~25 min
    python scripts/bench_long.py --lengths 2048 4096 --cp 2 --packing packed
    python scripts/bench_long.py --scenario3         # the card's scenario 3: dp_shard 2 x tp 2 x cp 2 on 8
                                                     # CPU ranks, 16K packed tokens per row
    python scripts/bench_long.py --attention         # the attention path alone, one process: ds-tp's
                                                     # per-document sdpa against masked sdpa (2K..32K)

Whole runs are `ds-tp train` through the deepspeed launcher on CPU ranks (gloo), 3 steps of one row of T tokens
(packed: documents of T/8 tokens; unpacked: one document per row) with the builtin-family model; "plain" is
today's defaults, "long" adds gradient_checkpointing, tiled_mlp and chunked_cross_entropy. Figures: rank 0's
peak resident set (every CP rank holds the same T/cp tokens), the part of it above the same run at T=256
(what grows with T), tokens/s of the last step, and the step losses. The fitted exponent is the slope of
log(memory above T=256) against log(T) from 4K up.

Attention mode: each measurement runs in its own subprocess: peak resident set (CPU) or
torch.cuda.max_memory_allocated (GPU) after one forward and backward, minus the process's memory before the
forward, and tokens/s of that step.
Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

from bench_long_runs import VARIANTS  # scripts/ is on sys.path when run as a script

SHAPE = dict(vocab_size=112, hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=65536)
MASKED_LIMIT = 8192  # masked sdpa's T x T weights beyond this do not fit 24 GB on CPU


def child(length: int, packed: bool, path: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ds_tp.train.attention import register_document_sdpa
    torch.manual_seed(0)
    attn = register_document_sdpa() if path == "document" else "sdpa"
    model = LlamaForCausalLM(LlamaConfig(**SHAPE, attn_implementation=attn)).train()
    ids = torch.randint(1, SHAPE["vocab_size"], (1, length))
    doc = length // 8 if packed else length
    pos = torch.arange(length) % doc
    cuda = torch.cuda.is_available()
    if cuda:
        model, ids, pos = model.cuda(), ids.cuda(), pos.cuda()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_now()
    start = time.perf_counter()
    loss = model(input_ids=ids, position_ids=pos[None], labels=ids).loss
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    took = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"T": length, "packed": packed, "path": path, "mem_gib": (peak - before) / 2**30,
            "tokens_per_s": length / took}


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def exponent(rows: list[dict]) -> float | None:
    points = [(math.log(r["T"]), math.log(r["mem_gib"])) for r in rows if r["T"] >= 4096 and r["mem_gib"] > 0]
    if len(points) < 2:
        return None
    mx, my = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def attention_table(lengths: list[int]) -> dict:
    rows = []
    for packed in (True, False):
        for path in ("document", "masked"):
            for length in lengths:
                if path == "masked" and length > MASKED_LIMIT:
                    continue
                out = subprocess.run([sys.executable, __file__, "--child", str(length), str(int(packed)), path],
                                     capture_output=True, text=True, timeout=1800)
                if out.returncode != 0:
                    print(f"T={length} packed={packed} {path}: failed: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"T {length:>6}  {'packed  ' if packed else 'unpacked'}  {path:<8}  "
                      f"{row['mem_gib']:7.3f} GiB  {row['tokens_per_s']:9.0f} tok/s", flush=True)
    fits = {f"{'packed' if p else 'unpacked'}/{path}": exponent([r for r in rows if r["packed"] == p and r["path"] == path])
            for p in (True, False) for path in ("document", "masked")}
    for name, slope in fits.items():
        print(f"memory ~ T^{slope:.2f}  ({name}, T >= 4K)" if slope is not None else f"{name}: too few points")
    return {"rows": rows, "exponents": fits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--cp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--packing", nargs="+", default=["packed", "unpacked"], choices=["packed", "unpacked"])
    parser.add_argument("--variants", nargs="+", default=["plain", "long"], choices=list(VARIANTS))
    parser.add_argument("--attention", action="store_true", help="the one-process attention-path table")
    parser.add_argument("--scenario3", action="store_true", help="dp_shard 2 x tp 2 x cp 2, 8 ranks, 16K packed")
    parser.add_argument("--child", nargs=3, metavar=("T", "PACKED", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1] == "1", args.child[2])))
        return 0
    if args.attention:
        print(json.dumps(attention_table(args.lengths if argv and "--lengths" in argv else
                                         [2048, 4096, 8192, 16384, 32768])))
        return 0
    from bench_long_runs import scenario3, whole_runs
    print(json.dumps(scenario3() if args.scenario3 else whole_runs(args.lengths, args.cp, args.packing,
                                                                    args.variants)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
