"""ds-tp's explicit training loop: gradient accumulation, token-weighted loss, logging, eval, saves.

Loss: every micro-batch contributes sum(token losses) / (trainable tokens in the whole global
batch), so one optimizer step minimises the mean over every token of the global batch, whatever
the split into micro-batches, data-parallel ranks or sequence shards. Each rank backpropagates its
own shard's sum (Ulysses' all-to-all carries the gradients between CP ranks); DeepSpeed divides by
gas (backward) and by ResolvedRun.gradient_divisor ranks when it reduces the gradients; the factor
gas * gradient_divisor undoes both. The logged loss sums every rank's share.
"""
from __future__ import annotations

import math
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ds_tp.train.batches import BatchOrder, collate, shard_sequence, trainable_tokens
from ds_tp.train.checkpoint import optimizer_param_names, save_checkpoint, versions
from ds_tp.train.flops import mfu
from ds_tp.train.internals import disable_backward_allreduce
from ds_tp.train.loss import linear_cross_entropy_sum
from ds_tp.train.metrics import ConsoleEvents, MetricsLog, console
from ds_tp.train.nonfinite import StepGuard
from ds_tp.train.schedule import EvalStepped
from ds_tp.train.tiled import activation_offload, tiled_loss_sum
from ds_tp.train.trackers import Trackers
from ds_tp.train.watchdog import EarlyStopping, LossWatchdog


@dataclass
class StepResult:
    step: int
    done: int
    loss_sum: torch.Tensor  # this rank's summed token losses of the step
    global_tokens: int
    lr: float
    real_tokens: int
    started: float


@dataclass
class LoopState:
    """What the after-step actions share across steps."""

    metrics: MetricsLog | None
    trackers: Trackers | None
    progress: ConsoleEvents | None
    guard: StepGuard
    agreement: object | None
    stop: object | None
    watchdog: LossWatchdog
    early: EarlyStopping
    window_start: float
    window_tokens: int = 0
    tokens: int = 0  # real tokens trained through the last step, over the whole run (resumes included)
    train_s: float = 0.0  # seconds in the loop before this attempt started (a resumed run's earlier share)
    loop_start: float = 0.0
    save_s: float = 0.0
    row: dict | None = None
    halted: bool = False


class Trainer:
    def __init__(self, plan, run, mesh, engine, train_rows, eval_rows, pad_id: int, flops_token: float,
                 peak: float | None, log):
        import deepspeed.comm as dist

        self.dist = dist
        self.plan, self.resolved, self.mesh, self.engine, self.log = plan, run, mesh, engine, log
        self.finished_early = False  # early stopping: the run is complete, the model is exported
        self.train_rows, self.eval_rows, self.pad_id = train_rows, eval_rows, pad_id
        self.flops_token, self.peak = flops_token, peak
        cfg = plan.config
        self.micro = engine.train_micro_batch_size_per_gpu()
        self.gas = engine.gradient_accumulation_steps()
        self.layout = mesh.layout
        self.tokens_in_loss = self._loss_weights(train_rows)  # what one row adds to the loss's divisor
        self.loss_copies = self.layout.tp  # ranks holding the same summed loss (TP ranks compute copies)
        self.eval_metrics: dict = {}  # figures evaluate() adds to the eval row (preference tuning's rewards)
        # real tokens (packed rows may be padded) for tokens/s and MFU
        lengths = train_rows["length"] if "length" in train_rows.column_names else \
            [len(x) for x in train_rows["input_ids"]]
        self.row_lengths = np.array(lengths, dtype=np.int64)
        grouped = cfg.get("group_by_length") and not cfg.get("sample_packing")  # packing: Axolotl ignores it too
        self.batches = BatchOrder(rows=len(train_rows), micro=self.micro, gas=self.gas, dp=self.layout.dp,
                                 seed=int(cfg.get("seed", 42)), steps_per_epoch=plan.steps_per_epoch,
                                 lengths=self.row_lengths if grouped else None)
        self.pad_to = int(cfg["sequence_len"]) if cfg.get("pad_to_sequence_len") else None
        self.device = engine.device
        self.output_dir = Path(plan.output_dir)
        if engine.zero_optimization_stage() == 0 and self.layout.dp * self.layout.cp == 1:
            # One replica: nothing to average, but DeepSpeed would still flatten every gradient into
            # buckets and all-reduce them over a group of one (10 ms a step on the CPU benchmark).
            disable_backward_allreduce(engine)
        self.loss_head = self._chunked_head(cfg)
        self.no_positions = torch.zeros(0, dtype=torch.long, device=self.device)
        autocast = run.precision.autocast_dtype  # the chunked loss runs outside engine.forward
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=getattr(torch, autocast))) if autocast \
            else nullcontext

    def _loss_weights(self, rows) -> np.ndarray:
        """Per row, what it adds to the loss's divisor: its trainable tokens (the token-mean loss)."""
        return np.array([trainable_tokens(x) for x in rows["labels"]], dtype=np.int64)

    def _begin_step(self, global_rows: np.ndarray) -> None:
        """Called before a step's first micro-batch with the rows of the whole global batch."""

    def _chunked_head(self, cfg):
        """("fused", head weight) or ("tiled", head module) as ResolvedRun.long_context decided, else None."""
        memory = self.resolved.long_context
        if memory.loss == "standard":
            return None
        head = self.engine.module.get_output_embeddings()
        if memory.loss == "fused":
            self.log(f"chunked_cross_entropy: LM head and loss fused in {memory.loss_chunks} chunks (no full logits)")
            return "fused", head.weight
        self.log(f"chunked_cross_entropy: the LM head ({'ZeRO-3-partitioned' if self.resolved.zero3 else 'TP-split'}) "
                 f"and loss over {memory.loss_chunks} sequence tiles, each recomputed in backward (no full logits)")
        return "tiled", head

    def _chunk_rows(self, rows: int) -> int:
        return max(1, math.ceil(rows / self.resolved.long_context.loss_chunks))

    def forward_memory(self):
        """Around the model's forward: activation offload when decided (train/tiled.py)."""
        if self.resolved.long_context.checkpointing != "offload" or not torch.is_grad_enabled():
            return nullcontext()
        return activation_offload(self.device)

    # --- one forward ------------------------------------------------------------------------
    def _loss_sum(self, rows: list[dict]) -> torch.Tensor:
        """The sum of this rank's token losses (its sequence shard under CP), differentiable."""
        batch = collate(rows, self.pad_id, multiple_of=self.resolved.sequence_divisor, pad_to=self.pad_to)
        batch = shard_sequence(batch, self.mesh.coords["cp"], self.layout.cp)
        batch = self._to_device(batch)
        shift = batch.pop("shift_labels")
        if self.loss_head is None:
            with self.forward_memory():
                logits = self.engine(**batch, use_cache=False).logits
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shift.reshape(-1),
                                   ignore_index=-100, reduction="sum")
        with self.forward_memory():  # chunked: the model stops at the hidden states
            out = self.engine(**batch, use_cache=False, output_hidden_states=True, logits_to_keep=self.no_positions)
        hidden, (how, head) = out.hidden_states[-1], self.loss_head
        if how == "tiled" and (hidden.requires_grad or not torch.is_grad_enabled()):
            return tiled_loss_sum(head, hidden, shift, self.resolved.long_context.loss_chunks, self.autocast)
        if how == "tiled":  # only the head trains (everything below frozen): its weight must be an autograd input
            with self.autocast():
                logits = head(hidden)
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shift.reshape(-1),
                                   ignore_index=-100, reduction="sum")
        with self.autocast():
            local = linear_cross_entropy_sum(hidden.reshape(-1, hidden.shape[-1]), head, shift.reshape(-1),
                                             self._chunk_rows(shift.numel()))
        return local

    def _to_device(self, batch: dict) -> dict:
        """On CUDA: pinned host memory and a non-blocking copy. A copy from pageable memory waits for
        the device to drain first, a sync per micro-batch that would stop the host from running ahead."""
        if self.device.type != "cuda":
            return {k: v.to(self.device) for k, v in batch.items()}
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}

    def _rows(self, dataset, indices) -> list[dict]:
        return [dataset[int(i)] for i in indices]

    # --- the loop: one train step, then a short list of after-step actions ------------------
    def run(self, start_step: int, stop=None, resumed: dict | None = None) -> int:
        """Train from start_step; returns the step reached (< total_steps when stopped by a signal)."""
        plan = self.plan
        main = self.mesh.is_main
        state = LoopState(
            metrics=MetricsLog(self.output_dir / "metrics.jsonl", start_step) if main else None,
            trackers=Trackers(plan.config, self.output_dir, start_step) if main else None,
            progress=console() if main else None,
            guard=StepGuard(self.engine, self.mesh.rank, int(plan.config.get("max_nonfinite_steps", 10)),
                            self.layout.tp),
            agreement=self._stop_agreement(stop), stop=stop, window_start=time.perf_counter(),
            watchdog=LossWatchdog(plan.config.get("loss_watchdog_threshold"), plan.config.get("loss_watchdog_patience")),
            early=EarlyStopping(plan.config.get("early_stopping_patience"), (resumed or {}).get("early_stopping")))
        state.tokens = int(sum(self.row_lengths[self.batches.global_rows(s)].sum() for s in range(start_step)))
        state.train_s = float(state.metrics.last_row.get("train_s", 0.0)) if state.metrics else 0.0
        state.loop_start = time.perf_counter()
        if state.trackers and state.trackers.describe():
            self.log(f"trackers: {state.trackers.describe()}")
        if state.progress:
            state.progress.start(start_step, plan.total_steps)
        actions = (self._log_if_due, self._evaluate_if_due, self._show, self._save_or_stop)
        reached = start_step
        with (self._profiler() if plan.use_profiler else nullcontext()) as prof:
            for step in range(start_step, plan.total_steps):
                result = self._train_step(step, state.guard)
                reached = result.done
                state.window_tokens += result.real_tokens
                state.tokens += result.real_tokens
                if prof is not None and hasattr(prof, "step"):
                    prof.step()
                state.row = None
                for action in actions:
                    action(result, state)
                if state.halted:
                    break
        for closing in (state.agreement, state.progress, state.metrics, state.trackers):
            if closing is not None:
                closing.close()
        return reached

    def _train_step(self, step: int, guard: StepGuard) -> "StepResult":
        """One optimizer step: gas micro-batches forward and backward, then DeepSpeed's step."""
        engine, started = self.engine, time.perf_counter()
        global_rows = self.batches.global_rows(step)
        global_tokens = max(1, int(self.tokens_in_loss[global_rows].sum()))
        self._begin_step(global_rows)
        lr = engine.optimizer.param_groups[0]["lr"]  # the rate this step runs at
        accumulated = torch.zeros((), device=self.device)
        dp_rank = self.mesh.coords["dp"]
        for m in range(self.gas):
            rows = self._rows(self.train_rows, self.batches.micro_rows(step, m, dp_rank))
            local = guard.loss(self._loss_sum(rows), step)
            engine.backward(local * (self.gas * self.resolved.gradient_divisor / global_tokens))
            if m == self.gas - 1:
                guard.before_optimizer_step()
            engine.step()
            accumulated += local.detach()
        return StepResult(step=step, done=step + 1, loss_sum=accumulated, global_tokens=global_tokens, lr=lr,
                          real_tokens=int(self.row_lengths[global_rows].sum()), started=started)

    def _due(self, every: int | None, done: int) -> bool:
        return bool(every) and (done % every == 0 or done == self.plan.total_steps)

    def _log_if_due(self, result: "StepResult", state: "LoopState") -> None:
        if self._due(self.plan.logging_steps, result.done):
            state.row = self._log_row(result.done, result.loss_sum, result.global_tokens, result.lr,
                                      state.window_tokens, state.window_start, state.guard)
            state.window_tokens, state.window_start = 0, time.perf_counter()
            state.row |= {"tokens": state.tokens, "train_s": state.train_s + time.perf_counter() - state.loop_start}
            if state.metrics:
                state.metrics.write(state.row)
            if state.trackers:
                state.trackers.write(state.row)
            state.watchdog.check(result.done, state.row["loss"])
        state.guard.after_optimizer_step(result.step)  # after the row is written: it shows the last skipped step

    def _evaluate_if_due(self, result: "StepResult", state: "LoopState") -> None:
        if not self._due(self.plan.eval_steps, result.done):
            return
        eval_row = {"step": result.done, "total_steps": self.plan.total_steps, "eval_loss": self.evaluate(),
                    **self.eval_metrics}
        if isinstance(self.engine.lr_scheduler, EvalStepped):  # reduce_lr_on_plateau, greedy: as HF Trainer
            self.engine.lr_scheduler.step(eval_row["eval_loss"])
        if state.metrics:
            state.metrics.write(eval_row)
        if state.trackers:
            state.trackers.write(eval_row)
        if state.progress:
            state.progress.update(result.done, eval_row)
        if state.early.should_stop(eval_row["eval_loss"]) and result.done < self.plan.total_steps:
            self.log(f"early stopping: eval_loss has not improved on {state.early.best:.4f} for "
                     f"{state.early.without_improvement} evaluations (early_stopping_patience); stopping after step "
                     f"{result.done} and saving the model")
            self.finished_early = True
            state.halted = True

    def _show(self, result: "StepResult", state: "LoopState") -> None:
        if state.progress:
            state.progress.update(result.done, state.row)

    def _save_or_stop(self, result: "StepResult", state: "LoopState") -> None:
        """Save when due, or when the ranks agreed to stop and a save fits the grace period; then stop."""
        done, total = result.done, self.plan.total_steps
        step_s = time.perf_counter() - result.started
        halt = state.agreement.poll(step_s, state.save_s) if state.agreement and done < total else None
        path = None
        if (self.plan.save_steps and done % self.plan.save_steps == 0 and done < total) or (halt and halt.save):
            save_start = time.perf_counter()
            path = self._save(done, state)
            state.save_s = time.perf_counter() - save_start
        if halt:
            self._stopped(state.stop, halt, done, path if halt.save else None)
            state.halted = True

    def _stop_agreement(self, stop):
        from ds_tp.train.preempt import DEFAULT_GRACE_S, StopAgreement
        if stop is None:
            return None
        grace = float(self.plan.config.get("preemption_grace_period", DEFAULT_GRACE_S))
        return StopAgreement(stop, self.mesh.control_group, grace)

    def _stopped(self, stop, halt, done: int, path: Path | None) -> None:
        from ds_tp.runfiles import existing_checkpoints
        from ds_tp.train.preempt import write_marker
        why = None
        if path is None:
            done_before = existing_checkpoints(self.output_dir)
            path = done_before[-1] if done_before else None
            why = (f"a save (last took {halt.save_s:.0f} s) after {halt.waited_s:.0f} s since the signal and a "
                   f"{halt.step_s:.0f} s step would pass preemption_grace_period")
        if self.mesh.is_main:
            write_marker(self.output_dir, done, path, stop.signal_name, why)
        self.log(f"{stop.signal_name or 'a signal'} on some rank: stopped after step {done}; "
                 + (f"saved {path}" if why is None else f"not saved: {why}"))

    def _save(self, done: int, loop: "LoopState") -> Path:
        plan = self.plan
        state = {"early_stopping": loop.early.state(), "total_steps": plan.total_steps, "global_batch": plan.global_batch, "layout": plan.run["layout"],
                 "run": plan.run,
                 "world": self.mesh.world, "model_path": plan.model_path, "config": plan.config,
                 "versions": versions(), "optimizer_params": optimizer_param_names(self.engine),
                 "yaml_gas": getattr(plan, "yaml_gas", None) or plan.config.get("gradient_accumulation_steps")}
        adapter = self.resolved.adapter
        extra = None
        if adapter is not None:  # the adapter folder too: PeftModel.from_pretrained(base, checkpoint) loads it
            from ds_tp.train.adapter import save_adapter
            extra = lambda folder: save_adapter(self.engine, self.mesh, plan, folder)  # noqa: E731
        path = save_checkpoint(self.engine, self.mesh, self.output_dir, done, state, plan.config.get("save_total_limit"),
                               trainable_only=adapter is not None, extra=extra)
        self.log(f"saved {path}")
        return path

    def _log_row(self, done, accumulated, global_tokens, lr, window_tokens, window_start, guard) -> dict:
        total = accumulated.clone()
        self.dist.all_reduce(total)  # every rank's share; TP ranks hold copies, hence / tp
        loss = total.item() / self.loss_copies / global_tokens
        elapsed = max(time.perf_counter() - window_start, 1e-9)
        tokens_per_s = window_tokens / elapsed
        per_device = tokens_per_s / self.mesh.world
        norm = self.engine.get_global_grad_norm()
        if norm is None and guard.last_norm is not None and self.layout.tp == 1:  # stage 0: the guard's norm
            norm = guard.last_norm
        norm = float(norm) if norm is not None else None
        return {"step": done, "total_steps": self.plan.total_steps, "loss": loss, "lr": lr,
                "grad_norm": norm, "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": per_device,
                "peak_mem_gib": peak_memory_gib(self.device), "mfu": mfu(per_device, self.flops_token, self.peak),
                "epoch": done / self.plan.steps_per_epoch, "skipped_steps": self.engine.skipped_steps}

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted loss over the whole eval split; data-parallel ranks take interleaved rows."""
        self.engine.eval()
        dp_rank, dp = self.mesh.coords["dp"], self.layout.dp
        mine = list(range(dp_rank, len(self.eval_rows), dp))
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        # Every rank runs the same number of forwards (ZeRO-3 gathers are collective).
        batches = math.ceil(math.ceil(len(self.eval_rows) / dp) / self.micro)
        for b in range(batches):
            chunk = mine[b * self.micro:(b + 1) * self.micro]
            rows = self._rows(self.eval_rows, chunk) if chunk else self._rows(self.eval_rows, [0])
            local = self._loss_sum(rows)
            if chunk:
                total += local.double()
                count += sum(trainable_tokens(r["labels"]) for r in rows)
        self.dist.all_reduce(total)
        self.dist.all_reduce(count)
        self.engine.train()
        # TP ranks duplicate; CP shards partition a sequence but count tokens once per rank: divide both.
        return (total / self.layout.tp).item() / max(1.0, (count / (self.layout.tp * self.layout.cp)).item())

    def _profiler(self):
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        out = self.output_dir / "profiler"
        self.log(f"profiling steps 2-4 into {out}")
        return profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=3, repeat=1),
                       on_trace_ready=tensorboard_trace_handler(str(out), worker_name=f"rank{self.mesh.rank}"))


def peak_memory_gib(device) -> float:
    if torch.cuda.is_available() and getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: peak resident set (KiB -> GiB)
