"""scripts/bench.py's pure side: ds-tp's metrics window, the result JSON, its ratios and the summary
(tested in tests/unit/test_bench.py without training anything)."""
from __future__ import annotations

import re

from ds_tp.train.flops import mfu

WAYS = ("ds_tp", "hf_trainer", "hf_trainer_zero3", "torch")


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'; 'CPU' stays 'cpu'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def ds_tp_window(rows: list[dict], warmup: int, step_real_tokens: dict[int, int]) -> tuple[int, float]:
    """(real tokens, seconds) of the measured steps from ds-tp's metrics rows.

    ds-tp logs every `warmup` steps; each row's tokens_per_s covers the steps since the previous row
    and counts their real (non-padding) tokens, so its seconds are those tokens / tokens_per_s."""
    seconds, real = 0.0, 0
    previous = warmup
    train_rows = sorted((r for r in rows if "tokens_per_s" in r), key=lambda r: r["step"])
    if not any(r["step"] == warmup for r in train_rows):
        raise ValueError(f"no metrics row at the end of the warm-up (step {warmup}): logging_steps must be {warmup}")
    for row in train_rows:
        if row["step"] <= warmup:
            continue
        counted = sum(step_real_tokens[s] for s in range(previous + 1, row["step"] + 1))  # 1-based steps
        seconds += counted / row["tokens_per_s"]
        real += counted
        previous = row["step"]
    if real == 0:
        raise ValueError("no measured steps in ds-tp's metrics")
    return real, seconds


def tokens_per_s(run: dict) -> float:
    return run["tokens"] / run["seconds"]


def best_run(runs: list[dict]) -> dict | None:
    """The fastest of a way's rounds (others on the machine only ever slow a run down), or None."""
    good = [r for r in runs if not r.get("error")]
    return max(good, key=tokens_per_s) if good else None


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def step_intervals(ends: list[float], warmup: int) -> list[float]:
    """Seconds of each measured step from the times its optimizer steps ended (ends[i]: the end of step
    i + 1): steps warmup + 1 .. len(ends), each from the end of the step before it."""
    return [b - a for a, b in zip(ends[warmup - 1:], ends[warmup:])]


def assemble(results: dict[str, list[dict]], *, device: dict, precision: str, versions: dict, setup: dict,
             flops_token: float, peak_flops: float | None, date: str) -> dict:
    """The one JSON object: per-way tokens/s (best round), MFU, peak memory, the ratios ds_tp / each
    other way, and every round's tokens/s."""
    out: dict = {"date": date, "device": device["name"], "accelerator": device["accelerator"],
                 "precision": precision, "world": 1, **setup, "flops_per_token": flops_token,
                 "peak_flops": peak_flops, "versions": versions}
    for way in WAYS:
        runs = results.get(way) or []
        r = best_run(runs)
        if r is None:
            out[f"{way}_tokens_per_s"] = None
            out[f"{way}_error"] = runs[0].get("error", "not run") if runs else "not run"
            continue
        out[f"{way}_tokens_per_s_rounds"] = [None if x.get("error") else round(tokens_per_s(x), 2) for x in runs]
        tps = tokens_per_s(r)
        out[f"{way}_tokens_per_s"] = round(tps, 2)
        out[f"{way}_s_per_step"] = round(r["seconds"] / r["steps"], 5)
        way_mfu = mfu(tps, flops_token, peak_flops)  # world 1: tokens/s is per device
        out[f"{way}_mfu"] = None if way_mfu is None else round(way_mfu, 4)
        out[f"{way}_peak_mem_gib"] = round(r["peak_mem_gib"], 3)
        if r.get("process_max_rss_gib") is not None:
            out[f"{way}_process_max_rss_gib"] = round(r["process_max_rss_gib"], 3)
        if r.get("final_loss") is not None:
            out[f"{way}_final_loss"] = round(r["final_loss"], 4)
        medians = [median(x["step_s"]) if x.get("step_s") else None for x in runs if not x.get("error")]
        if any(m is not None for m in medians):
            # The median measured step of each round (CPU): a step that other jobs on the machine slowed moves
            # it little, where it moves the round's total; the fastest round's median counts.
            out[f"{way}_median_step_s_rounds"] = [None if m is None else round(m, 5) for m in medians]
            out[f"{way}_median_step_s"] = round(min(m for m in medians if m is not None), 5)
        if r.get("phases_ms"):
            out[f"{way}_phases_ms"] = r["phases_ms"]  # the fastest round's
        if r.get("cpu_seconds"):
            # Process CPU time over the same window: the share of a core the way got (1.0 = a whole core per
            # OMP thread on an idle machine), and tokens per CPU-second, which other jobs barely move.
            out[f"{way}_cpu_per_wall"] = [round(x["cpu_seconds"] / x["seconds"], 3) if x.get("cpu_seconds") else None
                                          for x in runs if not x.get("error")]
            out[f"{way}_tokens_per_cpu_s"] = round(max(x["tokens"] / x["cpu_seconds"] for x in runs
                                                       if x.get("cpu_seconds")), 2)
    base = out.get("ds_tp_tokens_per_s")
    base_cpu = out.get("ds_tp_tokens_per_cpu_s")
    for way in WAYS[1:]:
        other = out.get(f"{way}_tokens_per_s")
        out[f"ds_tp_vs_{way}"] = round(base / other, 4) if base and other else None
        other_cpu = out.get(f"{way}_tokens_per_cpu_s")
        if base_cpu and other_cpu:
            out[f"ds_tp_vs_{way}_per_cpu_s"] = round(base_cpu / other_cpu, 4)
        mine, theirs = out.get("ds_tp_median_step_s"), out.get(f"{way}_median_step_s")
        if mine and theirs:  # a speed ratio: the other way's step time over ds-tp's (> 1: ds-tp faster)
            out[f"ds_tp_vs_{way}_by_median_step"] = round(theirs / mine, 4)
            out[f"ds_tp_vs_{way}_by_median_step_by_round"] = [
                round(b / a, 4) for a, b in zip(out["ds_tp_median_step_s_rounds"], out[f"{way}_median_step_s_rounds"])
                if a and b]
        paired = paired_ratios(out.get("ds_tp_tokens_per_s_rounds"), out.get(f"{way}_tokens_per_s_rounds"))
        if paired:  # round by round (the two ran minutes apart at most): how much the ratio moves with load
            out[f"ds_tp_vs_{way}_by_round"] = paired
    return out


def paired_ratios(mine: list | None, other: list | None) -> list[float]:
    """ds_tp / other for each round both finished."""
    return [round(a / b, 4) for a, b in zip(mine or [], other or []) if a and b]


def summary_lines(result: dict) -> list[str]:
    mem = "GPU max allocated" if result["accelerator"] == "cuda" else "peak RSS"
    lines = [f"{result['device']} ({result['precision']}), seq {result['sequence_len']} x micro "
             f"{result['micro_batch_size']}, {result['warmup']} warm-up + {result['measured']} measured steps"]
    for way in WAYS:
        tps = result.get(f"{way}_tokens_per_s")
        if tps is None:
            error = result.get(f"{way}_error")
            lines.append(f"  {way:17s} " + ("(not run)" if error == "not run" else f"FAILED: {error}"))
            continue
        mfu = result.get(f"{way}_mfu")
        ratio = result.get(f"ds_tp_vs_{way}")
        cpu = result.get(f"{way}_tokens_per_cpu_s") if result["accelerator"] == "cpu" else None
        cpu_ratio = result.get(f"ds_tp_vs_{way}_per_cpu_s")
        lines.append(f"  {way:17s} {tps:10.1f} tok/s  {result[f'{way}_s_per_step']:.4f} s/step  "
                     f"{mem} {result[f'{way}_peak_mem_gib']:.2f} GiB"
                     + (f"  MFU {100 * mfu:.1f}%" if mfu is not None else "")
                     + (f"  ds_tp/{way} = {ratio:.3f}" if ratio is not None else "")
                     + (f"  median step {result[f'{way}_median_step_s']:.4f} s" if result.get(f"{way}_median_step_s")
                        else "")
                     + (f" (ds_tp/{way} {result[f'ds_tp_vs_{way}_by_median_step']:.3f})"
                        if result.get(f"ds_tp_vs_{way}_by_median_step") else "")
                     + (f"  | {cpu:.1f} tok/CPU-s, CPU/wall {result[f'{way}_cpu_per_wall']}" if cpu else "")
                     + (f", ds_tp/{way} per CPU-s = {cpu_ratio:.3f}" if cpu and cpu_ratio else ""))
        if result.get(f"{way}_phases_ms"):
            lines.append(f"  {'':17s} phases, median ms (fastest round): "
                         + ", ".join(f"{k} {v}" for k, v in result[f"{way}_phases_ms"].items()))
    return lines


# --- the parent --------------------------------------------------------------------------------

def round_orders(ways: list[str], rounds: int) -> list[list[str]]:
    """Rounds alternate forwards and backwards, so no way always runs first (or just after another)."""
    return [list(ways) if r % 2 == 0 else list(reversed(ways)) for r in range(rounds)]
