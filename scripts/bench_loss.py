#!/usr/bin/env python
"""Memory and time of the LM head + loss: the standard full-logits cross-entropy (what ds-tp's loop
does without chunked_cross_entropy) against ds-tp's chunked fused version (ds_tp.train.loss).

    python scripts/bench_loss.py            # CPU: 2048 tokens x hidden 256 x vocab 32000, fp32
                                            # CUDA: 8192 tokens x hidden 2048 x vocab 32000, bf16 autocast

Each variant runs in its own subprocess; time is the mean of --repeats steps after a first one.
Peak memory is what forward + backward of the head and loss add on top of their inputs: CUDA
max_memory_allocated over the timed steps, after a warm-up step; CPU the peak resident set (VmHWM,
reset through /proc/self/clear_refs) over all steps, first included, minus the resident set before
it (a warm-up would leave its freed memory in the heap and hide what a step needs). The last line is
one JSON object with both variants and the ratios chunked / standard.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(variant: str, tokens: int, hidden: int, vocab: int, chunks: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from ds_tp.train.loss import linear_cross_entropy_sum

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    h = torch.randn(tokens, hidden, device=device, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=device) / hidden ** 0.5).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step():
        with autocast:
            if variant == "standard":
                loss = F.cross_entropy((h @ w.t()).float(), y, reduction="sum")
            else:
                loss = linear_cross_entropy_sum(h, w, y, chunk=-(-tokens // chunks))
        loss.backward()
        h.grad = w.grad = None
        return loss.detach()

    if cuda:
        step()  # warm-up (allocator, kernels); memory below covers the measured steps only
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # No warm-up for memory on CPU: memory freed by an earlier step stays in the heap and would
        # hide what a step needs. Reset the kernel's peak-RSS mark (VmHWM), then the first step counts.
        Path("/proc/self/clear_refs").write_text("5")
        base = _proc_status_bytes("VmRSS")
        step()  # (not timed)
    start = time.perf_counter()
    for _ in range(repeats):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    peak = (torch.cuda.max_memory_allocated() if cuda else _proc_status_bytes("VmHWM")) - base
    return {"variant": variant, "device": torch.cuda.get_device_name() if cuda else "cpu", "seconds": seconds,
            "extra_peak_mib": peak / 2**20, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["standard", "chunked"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens, args.hidden, args.vocab, args.chunks, args.repeats)))
        return
    import torch
    cuda = torch.cuda.is_available()
    tokens = args.tokens or (8192 if cuda else 2048)
    hidden = args.hidden or (2048 if cuda else 256)
    results = {}
    for variant in ("standard", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--tokens", str(tokens), "--hidden",
                              str(hidden), "--vocab", str(args.vocab), "--chunks", str(args.chunks), "--repeats",
                              str(args.repeats)], capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant:9s} {r['seconds'] * 1000:8.1f} ms/step  +{r['extra_peak_mib']:8.1f} MiB  loss {r['loss']:.2f}")
    s, c = results["standard"], results["chunked"]
    print(json.dumps({"device": s["device"], "tokens": tokens, "hidden": hidden, "vocab": args.vocab,
                      "chunks": args.chunks, "standard": s, "chunked": c,
                      "time_ratio_chunked_vs_standard": c["seconds"] / s["seconds"],
                      "memory_ratio_chunked_vs_standard": c["extra_peak_mib"] / max(s["extra_peak_mib"], 1e-9)}))


if __name__ == "__main__":
    main()
