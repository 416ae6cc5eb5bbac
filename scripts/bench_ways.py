"""The child side of scripts/bench.py: each way trains in its own process (`bench.py --child WAY`)."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from bench_report import ds_tp_window, step_intervals

# --- the children ------------------------------------------------------------------------------

class OptimizerSteps:
    """Calls begin() and end() around each outermost optimizer step, through torch's global optimizer hooks.
    Outermost: a subclass whose step calls super().step() fires the hooks twice when both classes' steps were
    patched (torch patches each Optimizer class the first time one is built), and wrappers (DeepSpeed's,
    accelerate's) can nest the same way; only the outer pair counts."""

    def __init__(self, begin=None, end=None):
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        self.depth = 0

        def pre(*_):
            self.depth += 1
            if self.depth == 1 and begin:
                begin()

        def post(*_):
            self.depth -= 1
            if self.depth == 0 and end:
                end()
        self.handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class PhaseClock:
    """--phases (CPU): each step cut at its outermost forward's start and end and its optimizer step's start
    and end, through torch's global module and optimizer hooks, the same for every way. Phases: `between`
    (the end of the last optimizer step to the next forward: the loop's after-step work and the next batch),
    `forward`, `backward` (the end of the forward to the optimizer step: loss, backward, norm and clipping),
    `optimizer`; also the process's minor page faults per step. The module hooks cost every way a little."""

    def __init__(self):
        import resource

        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        self.events: list[tuple[str, float, int]] = []
        self.outer = None
        faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # noqa: E731
        mark = lambda tag: self.events.append((tag, time.perf_counter(), faults()))  # noqa: E731

        def pre(module, _args):
            if self.outer is None:
                self.outer = module
                mark("forward")

        def post(module, _args, _out):
            if module is self.outer:
                mark("backward")

        def opt_end():
            mark("between")
            self.outer = None
        self.steps = OptimizerSteps(lambda: mark("optimizer"), opt_end)
        self.handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]

    def close(self) -> None:
        self.steps.close()
        for handle in self.handles:
            handle.remove()

    def medians(self, warmup: int) -> dict:
        """Median milliseconds of each phase over the measured steps, and mean minor faults per step."""
        from bench_report import median
        spans: dict[str, list[float]] = {}
        done, faults = 0, []  # done: optimizer steps ended before the event that closes this phase
        for (_, t0, f0), (tag, t1, f1) in zip(self.events, self.events[1:]):
            if done + 1 > warmup:  # the phase belongs to step done + 1 (1-based)
                phase = {"forward": "between", "backward": "forward", "optimizer": "backward", "between": "optimizer"}[tag]
                spans.setdefault(phase, []).append(1e3 * (t1 - t0))
                faults.append(f1 - f0)
            done += tag == "between"
        out = {phase: round(median(v), 3) for phase, v in spans.items()}
        out["minor_faults_per_step"] = round(sum(faults) / max(done - warmup, 1))
        return out


def _peak_mem_gib() -> float:
    """The figure ds-tp's own metrics report (ds_tp.train.loop.peak_memory_gib), for every way."""
    import torch

    from ds_tp.train.loop import peak_memory_gib
    return peak_memory_gib(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rows(spec: dict):
    from ds_tp.data import load_prepared
    train_rows, _ = load_prepared(Path(spec["prepared_path"]))
    return train_rows


def child_ds_tp(spec: dict) -> dict:
    """Rank 0 of world 1 through ds-tp's worker, exactly as the launcher starts it."""
    from ds_tp.train import metrics
    from ds_tp.train.worker import main as worker_main

    # Observation only: the process CPU time when ds-tp writes each metrics row, i.e. at the ends of its
    # own timing windows (its wall-clock figures come from metrics.jsonl itself).
    cpu_at: dict[int, float] = {}
    write = metrics.MetricsLog.write

    def observed_write(self, row: dict) -> None:
        if "tokens_per_s" in row:
            cpu_at[row["step"]] = time.process_time()
        write(self, row)

    metrics.MetricsLog.write = observed_write
    rc = worker_main(["--run-file", spec["plan_path"]])
    if rc:
        raise RuntimeError(f"ds-tp worker exited {rc}")
    plan = json.loads(Path(spec["plan_path"]).read_text())
    rows = [json.loads(line) for line in (Path(plan["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    step_real = {int(k): v for k, v in spec["step_real_tokens"].items()}
    tokens, seconds = ds_tp_window(rows, spec["warmup"], step_real)
    last = max((r for r in rows if "tokens_per_s" in r), key=lambda r: r["step"])
    return {"tokens": tokens, "seconds": seconds, "steps": spec["total"] - spec["warmup"],
            "cpu_seconds": cpu_at[spec["total"]] - cpu_at[spec["warmup"]], "peak_mem_gib": last["peak_mem_gib"],
            "final_loss": last["loss"]}


def with_lora(model, spec: dict):
    """The way's model with --lora's adapter (peft), drawn after the same seed as ds-tp draws it."""
    if not spec.get("lora"):
        return model
    import torch
    from peft import LoraConfig, get_peft_model

    lora = spec["lora"]
    model.enable_input_require_grads()
    torch.manual_seed(spec["seed"])
    return get_peft_model(model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0,
                                            target_modules=lora["targets"], task_type="CAUSAL_LM"))


def _collate_hf(rows: list[dict], pad_id: int) -> dict:
    """ds-tp's collate, with the unshifted labels HF models expect (the model shifts them itself)."""
    import torch

    from ds_tp.train.batches import IGNORE, collate
    batch = collate(rows, pad_id)
    labels = torch.full_like(batch["input_ids"], IGNORE)
    labels[:, 1:] = batch["shift_labels"][:, :-1]
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "labels": labels}


def child_hf(spec: dict, zero3: bool) -> dict:
    import deepspeed
    import torch
    from torch.utils.data import Dataset, SequentialSampler
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    # As ds-tp does: DeepSpeed would otherwise JIT-compile a shared-memory comm op at init (~24 s of g++
    # on CPU; start-up only, never used at world 1). Same start-up for both, no effect on the timed steps.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    cuda = torch.cuda.is_available()
    if cuda:  # ds-tp's worker: tf32 "auto" on a device that has it
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    bf16 = spec["precision"] == "bf16"
    if zero3:
        ds = copy.deepcopy(spec["zero3_config"])
        optim = "adamw_torch_fused" if cuda else "adamw_torch"  # ds-tp's adamw_torch_fused: fused on CUDA only
    else:
        ds = copy.deepcopy(spec["ds_config"])  # the very JSON ds-tp wrote; HF fills it in place
        optim = "adamw_torch"  # unused: the JSON's optimizer block makes DeepSpeed build the optimizer
    opt = spec["ds_config"]["optimizer"]["params"]
    sched = spec["ds_config"].get("scheduler", {}).get("params", {})
    warmup, total = spec["warmup"], spec["total"]
    args = TrainingArguments(
        output_dir=str(Path(spec["work"]) / ("out-hf-zero3" if zero3 else "out-hf")),
        per_device_train_batch_size=spec["micro"], gradient_accumulation_steps=1, max_steps=total,
        learning_rate=opt["lr"], adam_beta1=opt["betas"][0], adam_beta2=opt["betas"][1], adam_epsilon=opt["eps"],
        weight_decay=opt["weight_decay"], max_grad_norm=spec["ds_config"]["gradient_clipping"],
        lr_scheduler_type="cosine", warmup_steps=sched.get("warmup_num_steps", spec["lr_warmup"]),
        optim=optim, bf16=bf16, logging_steps=warmup, save_strategy="no", report_to="none", seed=spec["seed"],
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, deepspeed=ds)
    # After TrainingArguments: under ZeRO-3 HF partitions the weights as the model is built (zero.Init).
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], attn_implementation="sdpa",
                                                 dtype=torch.float32)
    model.config.use_cache = False
    model = with_lora(model, spec)
    rows = _rows(spec)
    flat = [i for step in spec["order"] for i in step]

    class Rows(Dataset):
        def __len__(self):
            return len(flat)

        def __getitem__(self, k):
            return rows[flat[k]]

    class InOrder(Trainer):  # ds-tp's row order (BatchOrder), not HF's own shuffle
        def _get_train_sampler(self, *a, **kw):
            return SequentialSampler(self.train_dataset)

    clock: dict = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (warmup, total):
                _sync()
                clock[state.global_step] = time.perf_counter()
                clock[("cpu", state.global_step)] = time.process_time()
                if state.global_step == total:
                    clock["peak"] = _peak_mem_gib()

    pad_id = spec["pad_id"]
    trainer = InOrder(model=model, args=args, train_dataset=Rows(), data_collator=lambda b: _collate_hf(b, pad_id),
                      callbacks=[Clock()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps = total - warmup
    tokens = sum(spec["step_real_tokens"][str(s)] for s in range(warmup + 1, total + 1))
    return {"tokens": tokens, "seconds": clock[total] - clock[warmup], "steps": steps, "peak_mem_gib": clock["peak"],
            "cpu_seconds": clock[("cpu", total)] - clock[("cpu", warmup)],
            "final_loss": losses[-1] if losses else None,
            "zero_stage": trainer.model_wrapped.zero_optimization_stage()
            if hasattr(trainer.model_wrapped, "zero_optimization_stage") else None}


def child_torch(spec: dict) -> dict:
    import math

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from ds_tp.train.batches import collate

    torch.manual_seed(spec["seed"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], attn_implementation="sdpa",
                                                 dtype=torch.float32).to(device)
    model.config.use_cache = False
    model = with_lora(model, spec)
    model.train()
    p = spec["ds_config"]["optimizer"]["params"]
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=p["lr"], betas=tuple(p["betas"]), eps=p["eps"],
                                  weight_decay=p["weight_decay"], fused=bool(p.get("fused")) or None)
    warm, total = spec["lr_warmup"], spec["total"]

    def factor(step: int) -> float:  # linear warm-up then cosine to 0, as WarmupCosineLR
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and spec["precision"] == "bf16")
    rows = _rows(spec)
    warmup = spec["warmup"]
    t0 = None
    loss_value = None
    for step in range(total):
        batch = collate([rows[i] for i in spec["order"][step]], spec["pad_id"])
        n = max(1, int((batch["shift_labels"] != -100).sum()))  # on the host: no device sync
        ids, pos, shift = (batch[k].pin_memory().to(device, non_blocking=True) if cuda else batch[k]
                           for k in ("input_ids", "position_ids", "shift_labels"))  # as ds-tp's loop copies
        with autocast:
            logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shift.reshape(-1), ignore_index=-100,
                               reduction="sum") / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec["ds_config"]["gradient_clipping"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % warmup == 0:
            loss_value = loss.item()  # what a loop that logs every `warmup` steps syncs on
        if step + 1 == warmup:
            _sync()
            t0, cpu0 = time.perf_counter(), time.process_time()
    _sync()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    tokens = sum(spec["step_real_tokens"][str(s)] for s in range(warmup + 1, total + 1))
    return {"tokens": tokens, "seconds": seconds, "cpu_seconds": cpu_seconds, "steps": total - warmup,
            "peak_mem_gib": _peak_mem_gib(),
            "final_loss": loss_value}


def child(way: str, spec_path: Path, result_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    import torch
    torch.set_num_threads(int(spec["threads"]))
    # The end of every optimizer step, whichever way (and wrapper) ran it: per-step times measured alike for
    # all ways. CPU only: on a GPU the host runs ahead of the device, and a sync here would change the run.
    ends: list[float] = []
    if not torch.cuda.is_available():
        OptimizerSteps(end=lambda: ends.append(time.perf_counter()))
    phases = PhaseClock() if spec.get("phases") and not torch.cuda.is_available() else None
    if way == "ds_tp":
        result = child_ds_tp(spec)
    elif way == "hf_trainer":
        result = child_hf(spec, zero3=False)
    elif way == "hf_trainer_zero3":
        result = child_hf(spec, zero3=True)
    elif way == "torch":
        result = child_torch(spec)
    else:
        raise SystemExit(f"unknown way {way}")
    if len(ends) == spec["total"]:  # one optimizer step per training step (none skipped)
        result["step_s"] = step_intervals(ends, spec["warmup"])
    if phases is not None:
        result["phases_ms"] = phases.medians(spec["warmup"])
    result_path.write_text(json.dumps(result))
    print(f"[bench child {way}] {json.dumps(result)}", flush=True)
    return 0
