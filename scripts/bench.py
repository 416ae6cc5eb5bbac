"""Throughput benchmark: ds-tp's trainer against HF Trainer (same DeepSpeed JSON), HF Trainer with
Axolotl's ZeRO-3 JSON, and a plain PyTorch loop: same model, same data, same steps, one run.

    python scripts/bench.py                 # whatever device is here; ~10 min on 2 CPU cores, ~3 min on an H100
    python scripts/bench.py --quick         # a smoke run (few steps: the figures are not stable)
    python scripts/bench.py --lora          # the same four ways training a LoRA adapter (peft, rank 16 on
                                            # every linear layer; the base frozen)

Each way trains in its own subprocess (DeepSpeed/accelerate global state cannot leak, peak memory is
per way), all with the same OMP_NUM_THREADS, on one process (world 1):

  ds_tp            ds-tp's real code path: a YAML config, ds_tp.launch.train.prepare_training (data
                   prepared, plan and DeepSpeed JSON written), then ds_tp.train.worker.main as rank 0 of
                   world 1 in the child; figures from its own output_dir/metrics.jsonl.
  hf_trainer       transformers.Trainer, TrainingArguments(deepspeed=<the very JSON ds-tp wrote to
                   output_dir/ds_tp/deepspeed_config.json>); on one process that is ZeRO stage 0.
  hf_trainer_zero3 transformers.Trainer with Axolotl's deepspeed_configs/zero3_bf16.json (ZERO3_AXOLOTL).
  torch            a plain loop: torch.optim.AdamW, autocast bf16 where ds-tp trains in bf16, clip 1.0.

Same data for all four: ds-tp prepares it (synthetic text whose every training row is exactly
sequence_len tokens, so there is no padding), and every way reads those prepared rows in ds-tp's
order (ds_tp.train.batches.BatchOrder) and collates them with ds_tp.train.batches.collate.

Timing: the first `--warmup` optimizer steps are not measured; tokens/s = real (non-padding) tokens of
the measured steps / wall time from the end of the last warm-up step to the end of the last step (CUDA
synchronised at both ends). ds-tp's window is the one its own metrics.jsonl reports (logging_steps =
--warmup, so its rows after the first cover exactly the measured steps). On CPU every way runs in
--rounds interleaved rounds (default 2) and its fastest round counts, with OMP_NUM_THREADS=1 (a shared
2-core machine made 2-thread runs swing 7x); the process CPU time over the same window is reported too.
On CPU each way's child also records the end of every optimizer step (a global torch optimizer hook, the
same for every way): the median measured step per round, the fastest round's counting, and the ratio of
those medians, which a few steps slowed by other jobs on the machine move far less than the totals.

Peak memory: on CUDA torch.cuda.max_memory_allocated at the end of the last step; on CPU the way's
process's peak resident set (getrusage(RUSAGE_SELF).ru_maxrss inside the child at the end of the last
step, before any save; for ds-tp the peak_mem_gib of its last metrics row, which is the same call).
The whole child's peak RSS (os.wait4 in this process, model export included) is reported beside it.

The last line printed is one JSON object with every figure; the same object is written to
benchmarks/<date>-<device>.json.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A Llama from the builtin tiny-llama's LlamaConfig family, big enough that compute, not per-step
# overhead, dominates on 2 CPU cores (~3.9 M non-embedding parameters), with the tiny-llama tokenizer.
CPU_SHAPE = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, max_position_embeddings=1024)
CPU_RUN = dict(sequence_len=256, micro_batch_size=4, warmup=8, measured=120)  # ~35 s a way on 2 cores
# TinyLlama-1.1B's shape, randomly initialised (nothing is downloaded).
GPU_SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048, vocab_size=32000)
GPU_RUN = dict(sequence_len=2048, micro_batch_size=4, warmup=10, measured=30)

# Axolotl's deepspeed_configs/zero3_bf16.json (axolotl-ai-cloud/axolotl), with the stage3_-prefixed key
# names (DeepSpeed aliases of the same fields) so that HF's integration fills the "auto" bucket sizes,
# and bf16 "auto" as the issue asks (bf16 where TrainingArguments.bf16 is on, i.e. where ds-tp uses bf16).
ZERO3_AXOLOTL = {
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "sub_group_size": 0,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_max_live_parameters": 0,
        "stage3_max_reuse_distance": 0,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "bf16": {"enabled": "auto"},
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}

LR, LR_WARMUP, SEED = 1e-4, 4, 42
# --lora: every way trains the same peft adapter (ds-tp from its YAML keys, the others with get_peft_model
# after the same seed), so each starts from the same adapter init
LORA = {"r": 16, "alpha": 32, "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


# the pure helpers live beside this file (tests/unit/test_bench.py loads them through this module)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import WAYS, assemble, best_run, device_slug, round_orders, summary_lines, tokens_per_s  # noqa: E402


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for name in ("torch", "deepspeed", "transformers", "accelerate", "ds-tp"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    try:
        git = ["git", "-C", str(REPO)]
        out["ds-tp_commit"] = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                             timeout=10).stdout.strip() or os.environ.get("DS_TP_BENCH_COMMIT")
        changed = subprocess.run(git + ["status", "--porcelain", "--", "ds_tp", "translators"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
        out["ds-tp_uncommitted_changes"] = bool(changed)  # ds_tp/ or translators/ differ from the commit
    except OSError:
        out["ds-tp_commit"] = None
    return out


def build_model(folder: Path, shape: dict) -> dict:
    """A seeded, randomly initialised LlamaForCausalLM + the tiny-llama tokenizer, saved once per shape."""
    meta_path = folder / "bench_model.json"
    requested = dict(shape)
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("requested") == requested:
        return json.loads(meta_path.read_text())
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ds_tp.assets import QUICKSTART_SEED, build_tokenizer, generate_quickstart_rows

    tokenizer = build_tokenizer(generate_quickstart_rows(2000, QUICKSTART_SEED))
    shape = dict(shape)
    vocab = shape.pop("vocab_size", None) or -(-len(tokenizer) // 8) * 8
    config = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, rms_norm_eps=1e-6,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > 10**8:  # half the bytes to write and read four times; every way loads it as fp32
        model = model.to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    meta = {"requested": requested, "shape": dict(shape, vocab_size=vocab), "n_params": n_params,
            "n_embedding": 2 * vocab * config.hidden_size}  # untied: embed_tokens + lm_head
    meta_path.write_text(json.dumps(meta))
    return meta


def write_data(path: Path, sequence_len: int, rows_needed: int) -> None:
    """Synthetic documents for the completion type: BOS + letters + EOS = 8 x sequence_len tokens (the
    tokenizer is character level), so completion cuts each into 8 full rows and packing adds no padding."""
    rng = random.Random(SEED)
    docs = -(-rows_needed // 8) + 1
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(docs):
            fh.write(json.dumps({"text": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                                                 for _ in range(8 * sequence_len - 2))}) + "\n")


def write_config(path: Path, *, model: Path, data: Path, work: Path, run: dict, deepspeed: dict | None = None,
                 lora: dict | None = None) -> None:
    total = run["warmup"] + run["measured"]
    lines = [
        f"base_model: {model}",
        "datasets:",
        f"  - path: {data}",
        "    type: completion",
        f"dataset_prepared_path: {work / 'prepared'}",
        f"sequence_len: {run['sequence_len']}",
        "sample_packing: true",
        f"micro_batch_size: {run['micro_batch_size']}",
        "gradient_accumulation_steps: 1",
        f"max_steps: {total}",
        f"learning_rate: {LR}",
        "lr_scheduler: cosine",
        f"warmup_steps: {LR_WARMUP}",
        "optimizer: adamw_torch_fused",
        "weight_decay: 0.0",
        "max_grad_norm: 1.0",
        "bf16: auto",
        "attn_implementation: sdpa",
        f"output_dir: {work / 'out-ds_tp'}",
        f"logging_steps: {run['warmup']}",
        f"seed: {SEED}",
    ]
    if deepspeed:  # ds-tp merges a `deepspeed:` mapping over the JSON it generates (JSON is YAML)
        lines.append(f"deepspeed: {json.dumps(deepspeed)}")
    if lora:
        lines += ["adapter: lora", f"lora_r: {lora['r']}", f"lora_alpha: {lora['alpha']}", "lora_dropout: 0.0",
                  f"lora_target_modules: {json.dumps(lora['targets'])}"]
    path.write_text("\n".join(lines) + "\n")


def run_child(way: str, spec_path: Path, work: Path, threads: int, accelerator: str, timeout: float,
              from_checkout: bool) -> dict:
    from ds_tp.launch.command import free_port

    result_path = work / f"result-{way}.json"
    result_path.unlink(missing_ok=True)
    log_path = work / f"log-{way}.txt"
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "DS_ACCELERATOR": "cuda" if accelerator == "cuda" else "cpu", "WANDB_DISABLED": "true"})
    if from_checkout:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", way, "--spec", str(spec_path),
           "--result", str(result_path)]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        print(f"[bench] {way} failed (exit {proc.returncode}); last lines of {log_path}:", flush=True)
        for line in tail:
            print(f"[bench]   {line}", flush=True)
        return {"error": f"exit {proc.returncode}, see {log_path}"}
    result = json.loads(result_path.read_text())
    result["process_max_rss_gib"] = usage.ru_maxrss / 2**20  # KiB -> GiB (Linux)
    result["process_wall_s"] = round(wall, 1)
    return result


def ensure_ds_tp() -> bool:
    """Import ds-tp as installed (pip install -e . or a wheel); else from this checkout. True if the
    checkout had to be put on sys.path (the children then get it on PYTHONPATH). An installed ds-tp
    must not be shadowed by the checkout: translators/ installs as ds_tp.translators."""
    import importlib.util
    if importlib.util.find_spec("ds_tp") is not None:
        return False
    sys.path.insert(0, str(REPO))
    return True


def _pad_id(plan) -> int:
    from ds_tp.model_config import load_tokenizer
    return load_tokenizer(plan.model_path, plan.config).pad_token_id


def parent(args) -> int:
    args.from_checkout = ensure_ds_tp()
    from ds_tp.device import probe_with_torch
    from ds_tp.launch.train import prepare_training
    from ds_tp.train.batches import BatchOrder
    from ds_tp.train.flops import flops_per_token, peak_flops

    device = probe_with_torch()
    cuda = device["accelerator"] == "cuda"
    shape, run = (dict(GPU_SHAPE), dict(GPU_RUN)) if cuda else (dict(CPU_SHAPE), dict(CPU_RUN))
    for key in ("sequence_len", "micro_batch_size", "warmup", "measured"):
        if getattr(args, key) is not None:
            run[key] = getattr(args, key)
    if args.quick:
        run.update(warmup=2, measured=4)
    args.rounds = args.rounds or (1 if cuda or args.quick else 2)
    run["measured"] = -(-run["measured"] // run["warmup"]) * run["warmup"]  # whole ds-tp logging windows
    total = run["warmup"] + run["measured"]
    threads = args.threads or (1 if not cuda else min(8, os.cpu_count() or 1))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ds-tp-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"[bench] device {device['name']}; work dir {work}; OMP_NUM_THREADS={threads} for every way", flush=True)

    meta = build_model(work / "model", shape)
    data = work / "data.jsonl"
    write_data(data, run["sequence_len"], total * run["micro_batch_size"])
    config = work / "bench.yaml"
    override = json.loads(args.deepspeed_override) if args.deepspeed_override else None
    lora = LORA if args.lora else None
    write_config(config, model=work / "model", data=data, work=work, run=run, deepspeed=override, lora=lora)
    # The real front end: schema, layout, data preparation, plan and DeepSpeed JSON, as `ds-tp train`.
    shutil.rmtree(work / "out-ds_tp", ignore_errors=True)  # the bench's own folder: a fresh run each time
    cfg, plan, plan_path, world, _ = prepare_training(config, [], 1)
    ds_json = json.loads((Path(plan.output_dir) / "ds_tp" / "deepspeed_config.json").read_text())
    print(f"[bench] ds-tp's DeepSpeed JSON (world {world}, ZeRO stage "
          f"{ds_json.get('zero_optimization', {}).get('stage')}, {plan.resolved.precision.name}): {json.dumps(ds_json)}", flush=True)

    # Which rows each step trains on, and how many tokens they hold: ds-tp's own order for every way.
    from ds_tp.data import load_prepared
    train_rows, _ = load_prepared(Path(plan.prepared_path))
    batches = BatchOrder(rows=plan.train_rows, micro=run["micro_batch_size"], gas=1, dp=1, seed=SEED,
                        steps_per_epoch=plan.steps_per_epoch)
    order = [[int(i) for i in batches.global_rows(s)] for s in range(total)]
    real = list(train_rows["length"])
    step_real = {s + 1: sum(real[i] for i in rows) for s, rows in enumerate(order)}

    n_non_embedding = meta["n_params"] - meta["n_embedding"]
    flops_token = flops_per_token(n_non_embedding, shape["num_hidden_layers"], shape["hidden_size"],
                                  run["sequence_len"])
    peak = peak_flops(device["name"], plan.resolved.precision.name) if cuda else None
    spec = {"plan_path": str(plan_path), "model_path": str(work / "model"), "prepared_path": plan.prepared_path,
            "ds_config": ds_json, "zero3_config": ZERO3_AXOLOTL, "precision": plan.resolved.precision.name, "order": order,
            "step_real_tokens": step_real, "warmup": run["warmup"], "total": total,
            "pad_id": _pad_id(plan), "lr": LR, "lr_warmup": LR_WARMUP, "seed": SEED, "work": str(work),
            "micro": run["micro_batch_size"], "threads": threads, "lora": lora,
            "phases": args.phases}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))

    results: dict[str, list[dict]] = {way: [] for way in args.ways}
    for number, ways in enumerate(round_orders(args.ways, args.rounds), 1):
        for way in ways:
            print(f"[bench] round {number}/{args.rounds} {way}: training {total} steps ({run['warmup']} "
                  "warm-up)...", flush=True)
            load = os.getloadavg()[0]
            r = run_child(way, spec_path, work, threads, device["accelerator"], args.child_timeout,
                          args.from_checkout)
            r["load_before"], r["load_after"] = round(load, 2), round(os.getloadavg()[0], 2)
            results[way].append(r)
            if not r.get("error"):
                print(f"[bench] round {number} {way}: {tokens_per_s(r):.1f} tok/s over {r['steps']} steps, "
                      f"peak {r['peak_mem_gib']:.2f} GiB, child wall {r['process_wall_s']} s, load average "
                      f"{r['load_before']} -> {r['load_after']}", flush=True)
    date = _dt.date.today().isoformat()
    setup = {"model": "TinyLlama-1.1B shape, random init" if cuda else "Llama (bench CPU shape), random init",
             "model_shape": meta["shape"], "n_params": meta["n_params"], "sequence_len": run["sequence_len"],
             "micro_batch_size": run["micro_batch_size"], "gradient_accumulation_steps": 1,
             "warmup": run["warmup"], "measured": run["measured"], "omp_num_threads": threads,
             "rounds": args.rounds, "load_average": {w: [[r.get("load_before"), r.get("load_after")] for r in rs]
                                                     for w, rs in results.items()},
             "tokens_per_step": step_real[1], "deepspeed_override": override, "zero_stage_ds_tp": ds_json.get("zero_optimization", {}).get("stage"),
             "ds_tp_json": ds_json, "zero3_json": ZERO3_AXOLOTL,
             "peak_mem_kind": "torch.cuda.max_memory_allocated" if cuda else
             "getrusage(RUSAGE_SELF).ru_maxrss in the child at the end of the last step",
             "host": platform.node(), "cpu_count": os.cpu_count(), "adapter": lora}
    result = assemble(results, device=device, precision=plan.resolved.precision.name, versions=versions(), setup=setup,
                      flops_token=flops_token, peak_flops=peak, date=date)
    for line in summary_lines(result):
        print(f"[bench] {line}", flush=True)
    if not args.no_save:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y-%m-%d")
        name = f"{stamp}-{device_slug(device['name'])}" + ("-lora" if lora else "")
        path = out_dir / f"{name}.json"
        if path.exists() and not args.overwrite_result:
            n = 2
            while (out_dir / f"{name}-run{n}.json").exists():
                n += 1
            path = out_dir / f"{name}-run{n}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"[bench] wrote {path}", flush=True)
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return 0 if all(best_run(rs) for rs in results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--warmup", type=int, help="unmeasured steps (default: 8 on CPU, 10 on GPU)")
    parser.add_argument("--measured", type=int, help="measured steps, rounded up to a multiple of --warmup")
    parser.add_argument("--sequence-len", dest="sequence_len", type=int)
    parser.add_argument("--micro-batch-size", dest="micro_batch_size", type=int)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every way (default: 1 on CPU, where "
                        "a busy machine makes multi-threaded runs erratic; up to 8 on GPU)")
    parser.add_argument("--rounds", type=int, help="run every way this many times, interleaved; the fastest "
                        "round of each way counts (default 2 on CPU, 1 on GPU and with --quick)")
    parser.add_argument("--deepspeed-override", help="JSON merged over ds-tp's generated DeepSpeed config (its "
                        "`deepspeed:` key), to try a change; ways ds_tp and hf_trainer both use the result")
    parser.add_argument("--quick", action="store_true", help="2 + 4 steps: a smoke run, not a measurement")
    parser.add_argument("--phases", action="store_true", help="CPU: also time each step's phases (between steps, "
                        "forward, backward, optimizer) and count page faults, alike for every way (bench_ways.PhaseClock)")
    parser.add_argument("--lora", action="store_true", help="every way trains a LoRA adapter (peft) on the frozen base")
    parser.add_argument("--work-dir", help="scratch folder (model, data, outputs, logs); default a new temp dir")
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks"))
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing to --out-dir")
    parser.add_argument("--overwrite-result", action="store_true", help="replace today's result file")
    parser.add_argument("--child-timeout", type=float, default=600)
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        ensure_ds_tp()  # the parent put a checkout on PYTHONPATH where ds-tp is not installed
        from bench_ways import child  # the child side lives beside this file
        return child(args.child, Path(args.spec), Path(args.result))
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
