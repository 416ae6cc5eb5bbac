"""One rank: `python -m ds_tp.train.worker --run-file output_dir/ds_tp/run.json`, started by the launcher."""
from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ds_tp.train.worker")
    parser.add_argument("--run-file", required=True)
    parser.add_argument("--local_rank", type=int, default=None)  # some launchers append it
    args = parser.parse_args(argv)

    import deepspeed
    import numpy as np
    import torch

    from ds_tp.data import load_prepared
    from ds_tp.device import probe_with_torch
    from ds_tp.model_config import load_tokenizer
    from ds_tp.runfiles import PreparedRun, read_state
    from ds_tp.train.checkpoint import agree_on_resume, load_checkpoint
    from ds_tp.train.export import export_hf
    from ds_tp.train.flops import PEAK_SOURCE, flops_per_token, peak_flops
    from ds_tp.train.loop import Trainer
    from ds_tp.train.mesh import attach_sequence_parallel, init_distributed
    from ds_tp.train.metrics import console
    from ds_tp.train.model import attention_for, load_model, shapes_before_sharding, sharding_report
    from ds_tp.train.optimizer import build_optimizer, param_groups
    from ds_tp.train.preempt import StopRequest
    from ds_tp.train.schedule import schedule_of, scheduler_factory
    stop = StopRequest().install()  # before the slow start-up, so an early Ctrl-C is not lost
    plan = PreparedRun.read(Path(args.run_file))
    run = plan.resolved  # every decision was made before launch; this rank only reads them
    cfg = plan.config
    layout = run.layout
    mesh = init_distributed(layout, int(cfg.get("ddp_timeout", 1800)))

    def log(message: str) -> None:  # for the user: the console too
        if mesh.is_main:
            console().say(message)

    def detail(message: str) -> None:  # for the record: this rank's log only
        if mesh.is_main:
            print(f"[ds-tp] {message}", flush=True)

    seed = int(cfg.get("seed", 42))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = probe_with_torch()
    if device["accelerator"] == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = run.precision.tf32
        torch.backends.cudnn.allow_tf32 = run.precision.tf32

    from ds_tp.plugins import apply_liger, call_hook, load_plugins
    plugins = load_plugins(plan.plugin_modules)
    call_hook(plugins, "pre_model_load", cfg)
    apply_liger(cfg, device["accelerator"], log)
    attn = attention_for(cfg, device["accelerator"], log, run.attention)
    if attn == "sdpa":  # packed documents without a T x T mask, and kept apart under Ulysses
        from ds_tp.train.attention import register_document_sdpa
        attn = register_document_sdpa()
    per_row = 2 if run.preference else 1  # preference rows are two sequences (chosen and rejected) in one forward
    attach_sequence_parallel(mesh, plan, run, attn, plan.ds_config["train_micro_batch_size_per_gpu"] * per_row,
                             int(cfg["sequence_len"]))
    if run.long_context.checkpointing != "off" or run.long_context.mlp_tiles or run.long_context.loss != "standard":
        log(f"memory: {run.long_context.describe()}")
    model, keep_alive = load_model(plan, run, attn, log)
    if run.adapter:
        from ds_tp.train.adapter import apply_adapter
        model = apply_adapter(model, run.adapter, cfg, run.zero3, seed, run.long_context)
    global_shapes = shapes_before_sharding(model)
    if run.adapter and layout.tp > 1:
        from ds_tp.train.tp_lora import split_lora_layers
        split_lora_layers(model, mesh, (plan.ds_config.get("tensor_parallel") or {}).get("partition_config"))
    call_hook(plugins, "post_model_load", cfg, model)
    if plan.mode == "evaluate":
        from ds_tp.train.evaluate import evaluate_model
        train_rows, eval_rows = load_prepared(Path(plan.prepared_path))
        pad_id = load_tokenizer(plan.model_path, cfg).pad_token_id
        evaluate_model(plan, run, mesh, model, attn, (train_rows, eval_rows, pad_id, 0.0, None), log)
        del keep_alive
        return 0
    shape = run.model
    groups = param_groups(model, float(cfg.get("weight_decay") or 0.0))
    # the user's own deepspeed JSON may name a DeepSpeed scheduler; otherwise ds-tp's schedule drives the rate
    own_schedule = "scheduler" in plan.ds_config
    optimizer = build_optimizer(cfg, groups, model, run.optimizer_holds_model_params)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, optimizer=optimizer,
                                           lr_scheduler=None if own_schedule else scheduler_factory(schedule_of(plan)),
                                           config=plan.ds_config, mpu=mesh.mpu)
    engine.train()  # from_pretrained returns eval mode: gradient checkpointing and dropout would be off
    graphs_before = compile_model(engine, cfg, device["accelerator"], log)
    log(f"layout {layout.product()}; effective batch {plan.global_batch} sequences "
        f"(micro {engine.train_micro_batch_size_per_gpu()} x gas {engine.gradient_accumulation_steps()} x dp "
        f"{layout.dp}); ZeRO stage {engine.zero_optimization_stage()}; precision {run.precision.name}; attention {attn}")
    for axis in ("tp", "cp", "dp"):
        detail(f"{axis} groups: {layout.groups(axis)}")
    for line in sharding_report(engine, mesh, global_shapes):
        detail(line)
    if layout.tp > 1 and shape.tied:
        detail("tied input/output embeddings: AutoTP keeps them replicated on every TP rank (not sharded)")
    for note in plan.notes:
        log(note)
    flops_token = flops_per_token(shape.non_embedding_params, shape.layers, shape.hidden, int(cfg["sequence_len"]))
    peak = peak_flops(device["name"], run.precision.name) if device["accelerator"] == "cuda" else None
    detail(f"FLOPs/token {flops_token:.3g} = 6N + 12*L*H*T (Kaplan 2020 / PaLM app. B); peak "
        + (f"{peak:.3g} FLOP/s ({PEAK_SOURCE})" if peak else f"unknown for {device['name']} ({run.precision.name}): "
           "MFU not reported"))

    start, state = 0, {}
    scheduler = engine.lr_scheduler
    if own_schedule and not plan.resume_from and getattr(scheduler, "last_batch_iteration", None) == -1:
        # DeepSpeed's Warmup* schedules give iteration -1 and iteration 0 both the floor rate, so the
        # first two steps would run at lr 0; one step here makes step k run at iteration k-1, as
        # transformers' warm-up schedules do (a resume restores the saved iteration instead).
        scheduler.step()
    agree_on_resume(Path(plan.resume_from) if plan.resume_from else None, mesh.control_group)  # every rank
    if plan.resume_from and plan.resume_other_layout:
        from ds_tp.train.checkpoint import restore_rng
        from ds_tp.train.reshard import load_resharded
        state = read_state(Path(plan.resume_from))
        load_resharded(engine, mesh, Path(plan.resume_from), state, global_shapes, log)
        restore_rng(Path(plan.resume_from), mesh.rank)
        start = int(state["step"])
        log(f"resumed from {plan.resume_from} at step {start}")
    elif plan.resume_from:
        state = load_checkpoint(engine, mesh, Path(plan.resume_from), trainable_only=run.adapter is not None)
        start = int(state["step"])
        log(f"resumed from {plan.resume_from} at step {start}")
    train_rows, eval_rows = load_prepared(Path(plan.prepared_path))
    pad_id = load_tokenizer(plan.model_path, cfg).pad_token_id
    trainer = preference_trainer(plan, run, mesh, engine, attn, (train_rows, eval_rows, pad_id, flops_token, peak),
                                 log) if run.preference else \
        Trainer(plan, run, mesh, engine, train_rows, eval_rows, pad_id, flops_token, peak, log)
    reached = trainer.run(start, stop, state)
    report_compiled(graphs_before, log)
    if reached < plan.total_steps and not trainer.finished_early:
        return 0  # stopped by a signal after saving a checkpoint; no export of a half-trained model
    if run.adapter:
        from ds_tp.train.adapter import save_adapter
        save_adapter(engine, mesh, plan, Path(plan.output_dir))
        log(f"saved the adapter to {plan.output_dir} (PeftModel.from_pretrained(base, dir) loads it; "
            "`ds-tp merge-lora` merges it)")
    else:
        export_hf(engine, mesh, plan, Path(plan.output_dir))
        log(f"saved the model to {plan.output_dir} (AutoModelForCausalLM.from_pretrained loads it)")
    del keep_alive
    import deepspeed.comm as dist
    dist.barrier()
    return 0


def preference_trainer(plan, run, mesh, engine, attn: str, data: tuple, log):
    """rl: the loop with TRL's preference losses, and its reference model (log-probs precomputed here when
    precompute_ref_log_probs asks for it)."""
    from ds_tp.train.preference import PreferenceTrainer
    from ds_tp.train.reference import build_reference, cache_path

    log(run.preference.describe())
    reference = build_reference(plan, run, mesh, engine, attn, bool(plan.resume_from), log)
    trainer = PreferenceTrainer(plan, run, mesh, engine, *data, log, reference=reference)
    if reference.mode == "precomputed":
        reference.precompute(trainer, cache_path(plan, run), log)
    return trainer


def compile_model(engine, cfg: dict, accelerator: str, log) -> int | None:
    """torch_compile (Axolotl's keys) through DeepSpeed's engine.compile: the module is compiled in
    place, so parameter names, checkpoints and the export are unchanged. "auto": on CUDA only.
    Returns dynamo's count of compiled graphs before (None: not compiled), for report_compiled."""
    wanted = cfg.get("torch_compile")
    if not wanted or (wanted == "auto" and accelerator != "cuda"):
        return None
    from torch._dynamo.utils import counters

    backend = cfg.get("torch_compile_backend") or "inductor"
    kwargs = {"mode": cfg["torch_compile_mode"]} if cfg.get("torch_compile_mode") else {}
    before = counters["stats"]["unique_graphs"]
    engine.compile(backend=backend, compile_kwargs=kwargs)
    log(f"torch_compile: model compiled with backend {backend}" + (f", mode {kwargs['mode']}" if kwargs else "")
        + " (the first steps include compilation)")
    return before


def report_compiled(graphs_before: int | None, log) -> None:
    """After training, what torch_compile did: engine.compile only wraps the module, and dynamo compiles a
    graph when the wrapped forward runs; none compiled means every step ran the model uncompiled."""
    if graphs_before is None:
        return
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"] - graphs_before
    log(f"torch_compile: {graphs} graph(s) compiled by dynamo and run in training" if graphs else
        "torch_compile: warning: dynamo compiled no graph, so the model ran uncompiled")


LOG_DIR_ENV, VERBOSE_ENV = "DS_TP_LOG_DIR", "DS_TP_VERBOSE"  # set by `ds-tp train`


def _deaf() -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def to_log_file(rank: int) -> None:
    """Under `ds-tp train`: this rank's stdout and stderr (DeepSpeed's, torch's and transformers' lines, and
    any traceback) appended to output_dir/ds_tp/logs/rank-N.log; with --verbose, also on the console."""
    import subprocess
    import time

    folder = os.environ.get(LOG_DIR_ENV)
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"rank-{rank}.log")
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"==== rank {rank}, pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
    sys.stdout.flush()
    sys.stderr.flush()
    if os.environ.get(VERBOSE_ENV):  # tee: the file and the console (the launcher's stdout) both get it
        # its own session, deaf to SIGINT/SIGTERM: a Ctrl-C or a preemption stops the rank at a step boundary,
        # and the rank's last lines (its checkpoint, its stop) must still have somewhere to go; tee ends at EOF
        tee = subprocess.Popen(["tee", "-a", path], stdin=subprocess.PIPE, stdout=sys.stdout.fileno(),
                               start_new_session=True, preexec_fn=_deaf)
        target = tee.stdin.fileno()
    else:
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)


def run(argv: list[str] | None = None) -> int:
    """main(), recording this rank's pid and, if it fails, its error for the launching process."""
    from ds_tp.runfiles import PreparedRun, record_rank_end, record_rank_error, record_rank_start

    args = (argv if argv is not None else sys.argv[1:])
    run_file = args[args.index("--run-file") + 1] if "--run-file" in args else None
    output_dir = PreparedRun.read(Path(run_file)).output_dir if run_file else None
    rank = int(os.environ.get("RANK", 0))
    to_log_file(rank)
    if output_dir:
        record_rank_start(output_dir, rank)
    try:
        code = main(argv)
        if output_dir:
            record_rank_end(output_dir, rank)
        import torch.distributed as tdist
        if tdist.is_initialized():  # gloo's threads stopped in order, not by the interpreter's teardown
            tdist.destroy_process_group()
        return code
    except Exception as exc:
        if output_dir:
            record_rank_error(output_dir, rank, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        raise


if __name__ == "__main__":
    sys.exit(run())
