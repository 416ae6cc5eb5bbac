#!/usr/bin/env python
"""Long-context memory of ds-tp's attention path: peak memory of one forward + backward against sequence
length T, packed (8 documents per row) and unpacked, ds-tp's per-document sdpa (train/attention.py) against
transformers' masked sdpa (a block-diagonal T x T mask for packed rows), on the builtin-family Llama shape.

    python scripts/bench_long.py                    # T = 2K..32K on CPU (masked sdpa up to 8K: beyond, the
                                                    # T x T weights exceed this machine's memory); ~3 min
    python scripts/bench_long.py --lengths 1024 2048 --quick

Each measurement runs in its own subprocess (so the peak is its own): peak resident set (CPU) or
torch.cuda.max_memory_allocated (GPU) after one forward and backward, minus the same process's memory
before the forward (model and inputs loaded), and tokens/s of that step. The fitted exponent is the slope
of log(memory) against log(T) over the lengths from 4K up. This measures the attention path alone on one
process; the whole run under context parallelism (cp 2, the card's scenario 3) is issue 18's next part.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--child", nargs=3, metavar=("T", "PACKED", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1] == "1", args.child[2])))
        return 0
    rows = []
    for packed in (True, False):
        for path in ("document", "masked"):
            for length in args.lengths:
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
    print(json.dumps({"rows": rows, "exponents": fits}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
