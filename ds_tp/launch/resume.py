"""Resuming a checkpoint: on the layout that saved it (DeepSpeed's own load) or on another one (train/reshard.py),
with the global batch the checkpoint trained with.

Decided here, before data preparation: the schedule's step counts and the data position (global batch b is
rows order[b*G:(b+1)*G], batches.py) depend on the global batch G = micro x gas x dp. When only the layout
changed, gradient_accumulation_steps is changed so that G stays (a notice says from what to what); when G
cannot be kept (it does not divide by micro x dp), or the YAML's micro_batch_size / gas themselves changed it,
the resume is refused in one line unless --allow-batch-change (then the data continues at step N's rows of the
new G: rows N x G onward, so some rows are skipped or seen twice in that epoch).
"""
from __future__ import annotations

from pathlib import Path

from ds_tp.errors import Problem, UserError

AXES = ("dp_replicate", "dp_shard", "tp", "cp")


def saved_layout(state: dict) -> dict:
    return {k: (state.get("layout") or {}).get(k) for k in AXES}


def plan_resume(cfg, checkpoint: Path, state: dict, allow_batch_change: bool) -> tuple[bool, list[str]]:
    """(another layout?, notices). May set cfg.values["gradient_accumulation_steps"] to keep the global batch."""
    values, layout = cfg.values, cfg.layout
    now = {k: getattr(layout, k) for k in AXES}
    before = saved_layout(state)
    other_layout = before != now
    if other_layout and bool((state.get("run") or {}).get("adapter")) != bool(values.get("adapter")):
        raise UserError(Problem(f"{checkpoint} was saved by a {'LoRA' if not values.get('adapter') else 'full'} "
                                "fine-tuning run; this config is not one", key="resume_from_checkpoint",
                                where=cfg.where(("adapter",))))
    run = state.get("run") or {}
    if other_layout and run.get("zero_stage") == 0 and not state.get("optimizer_params"):
        raise UserError(Problem(f"{checkpoint} was saved at ZeRO stage 0 without its optimizer's parameter names (an "
                                "older ds-tp, or DeepSpeed's bf16 optimizer): it resumes on its own layout "
                                f"{_product(before)} only", key="resume_from_checkpoint",
                                hint=f"resume on that layout, or `ds-tp export {checkpoint} OUT` and start from the model"))
    notes = []
    if other_layout:
        notes.append(f"resuming {checkpoint.name} saved on {_product(before)} (world {state.get('world')}) on "
                     f"{layout.product()}: weights, Adam moments, lr schedule and data position carried over")
    saved_batch = state.get("global_batch")
    micro, gas = int(values["micro_batch_size"]), int(values["gradient_accumulation_steps"])
    batch = micro * gas * layout.dp
    if not isinstance(saved_batch, int) or saved_batch == batch:
        return other_layout, notes
    saved_cfg = state.get("config") or {}
    saved_gas = state.get("yaml_gas") or saved_cfg.get("gradient_accumulation_steps")  # as its YAML wrote it
    same_yaml = (saved_cfg.get("micro_batch_size"), saved_gas) == (micro, gas)
    if same_yaml and saved_batch % (micro * layout.dp) == 0:
        new_gas = saved_batch // (micro * layout.dp)
        values["gradient_accumulation_steps"] = new_gas  # the YAML's own value travels as PreparedRun.yaml_gas
        notes.append(f"gradient_accumulation_steps {gas} -> {new_gas}: keeps the global batch of {saved_batch} "
                     f"sequences the checkpoint trained with (dp {(before.get('dp_replicate') or 1) * (before.get('dp_shard') or 1)}"
                     f" -> {layout.dp})" + ("; group_by_length groups by micro x gas, so its order changes"
                                            if values.get("group_by_length") else ""))
        return other_layout, notes
    why = (f"micro_batch_size {micro} x dp {layout.dp} does not divide it" if same_yaml else
           f"micro_batch_size / gradient_accumulation_steps changed from "
           f"{saved_cfg.get('micro_batch_size')} / {saved_gas} to {micro} / {gas}")
    if not allow_batch_change:
        raise UserError(Problem(f"{checkpoint} trained with a global batch of {saved_batch} sequences; this run's is "
                                f"{batch} ({why})", key="resume_from_checkpoint",
                                hint="pass --allow-batch-change to continue with the new batch, or choose "
                                "micro_batch_size x gradient_accumulation_steps x dp = " + str(saved_batch)))
    notes.append(f"global batch {saved_batch} -> {batch} (--allow-batch-change): the data continues at step "
                 f"{state.get('step')}'s rows of the new batch; the lr schedule keeps its step count")
    return other_layout, notes


def _product(saved: dict) -> str:
    return " x ".join(f"{k}({saved.get(k)})" for k in AXES)


def reshard_problem(run, state: dict) -> str | None:
    """Why this resolved run cannot take the checkpoint's state across layouts (checked after the run is resolved,
    before launch), or None."""
    saved_run = state.get("run") or {}
    saved_stage, stage = saved_run.get("zero_stage"), run.zero_stage
    if saved_stage in (1, 2) or stage in (1, 2):
        return "ZeRO stage 1 or 2 (from a deepspeed: JSON) is not resharded by ds-tp: it resumes on its own layout only"
    if stage == 0 and run.precision.half_weights:
        return (f"this layout runs {run.precision.name} at ZeRO stage 0 (DeepSpeed keeps the fp32 copy and moments in "
                "its own 16-bit optimizer wrapper, which ds-tp does not fill): resume with dp_shard_size > 1")
    return None
