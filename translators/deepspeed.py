"""Config + Layout -> the DeepSpeed JSON, with a reason for every key (the --explain table).

Pure: the device's facts (bf16/tf32 support) and, at train time, the model's hidden size and the
run's total steps come in as arguments. What is not known yet is left out and listed as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ds_tp.errors import Finding

from .family_rules import partition_config
from .layout import Layout, effective_batch
from .optimizer import optimizer_block
from .resolved import ResolvedRun, zero_stage
from .schedule import resolve_schedule

BIG = 10**12  # "never release": stage-3 reuse distance and live parameters when resharding is off


@dataclass
class ExplainRow:
    source: str  # the Axolotl key(s) it came from, or "ds-tp" for choices made here
    target: str  # the DeepSpeed key (dotted), or "(train time)" / "(torch)"
    value: Any
    why: str


@dataclass
class TrainFacts:
    """Facts known only at train time; None while translating."""

    hidden_size: int | None = None
    total_steps: int | None = None


@dataclass
class Translation:
    config: dict
    rows: list[ExplainRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    run: ResolvedRun | None = None  # the decisions this JSON was made from

    def set(self, target: str, value: Any, source: str, why: str) -> None:
        node = self.config
        *parents, leaf = target.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        self.rows.append(ExplainRow(source, target, value, why))

    def note(self, source: str, target: str, value: Any, why: str) -> None:
        self.rows.append(ExplainRow(source, target, value, why))


def translate(cfg: dict, run: ResolvedRun, facts: TrainFacts | None = None) -> Translation:
    """The DeepSpeed JSON for a resolved run: every decision is read from `run`, none made here."""
    facts = facts or TrainFacts()
    layout = run.layout
    out = Translation(config={}, run=run)
    micro, gas = cfg["micro_batch_size"], cfg["gradient_accumulation_steps"]
    out.set("train_micro_batch_size_per_gpu", micro, "micro_batch_size", "sequences per rank per forward")
    out.set(
        "gradient_accumulation_steps",
        gas,
        "gradient_accumulation_steps",
        "no train_batch_size: DeepSpeed would count TP/CP ranks as data parallel when checking it",
    )
    out.note(
        "micro_batch_size x gradient_accumulation_steps x dp",
        "(effective batch)",
        effective_batch(micro, gas, layout),
        f"{micro} x {gas} x {layout.dp} (world {layout.world} / (tp {layout.tp} x cp {layout.cp}))",
    )
    out.set(
        "gradient_clipping",
        float(cfg.get("max_grad_norm", 1.0)),
        "max_grad_norm",
        "always emitted: DeepSpeed >= 0.19.3 clips at 1.0 unless told (0.0 = off)",
    )
    out.set(
        "steps_per_print",
        2**31 - 1,
        "ds-tp",
        "ds-tp logs every logging_steps itself; DeepSpeed's duplicate step log is off",
    )
    out.set("wall_clock_breakdown", False, "ds-tp", "timers add syncs in the hot loop")
    _precision(run, out)
    _zero(cfg, run, facts, out)
    _parallel(layout, run.model, out)
    optimizer_block(cfg, run, out)
    _scheduler(cfg, facts, out)
    return out


def _precision(run: ResolvedRun, out: Translation) -> None:
    p = run.precision
    if p.name == "bf16-autocast":
        out.set("torch_autocast", {"enabled": True, "dtype": "bfloat16"}, "bf16", p.why)
    elif p.name == "bf16":
        out.set("bf16.enabled", True, "bf16", p.why)
    elif p.name == "fp16":
        out.set(
            "fp16",
            {
                "enabled": True,
                "loss_scale": 0,
                "initial_scale_power": 16,
                "loss_scale_window": 1000,
                "hysteresis": 2,
                "min_loss_scale": 1,
            },
            "fp16",
            p.why + "; dynamic loss scaling",
        )
    else:
        out.note("bf16/fp16", "(none)", "fp32", p.why)
    out.note("tf32", "(torch) allow_tf32", p.tf32, "not a DeepSpeed key: set on torch.backends at train time")


def _zero(cfg: dict, run: ResolvedRun, facts: TrainFacts, out: Translation) -> None:
    fsdp = cfg.get("fsdp_config") or {}
    layout = run.layout
    stage, why = zero_stage(layout)  # the generated stage; a user's deepspeed JSON is merged over it
    out.set("zero_optimization.stage", stage, "dp_shard_size", why)
    if stage != 3:
        return
    state = fsdp.get("state_dict_type", "FULL_STATE_DICT")
    out.set(
        "zero_optimization.stage3_gather_16bit_weights_on_model_save",
        True,
        "fsdp_config.state_dict_type" if "state_dict_type" in fsdp else "ds-tp",
        f"{state}: the HF export gathers full 16-bit weights"
        if "state_dict_type" in fsdp
        else "the HF export gathers full 16-bit weights",
    )
    if fsdp.get("offload_params"):
        out.set(
            "zero_optimization.offload_param",
            {"device": "cpu", "pin_memory": True},
            "fsdp_config.offload_params",
            "parameters live in CPU memory between uses",
        )
    if fsdp.get("reshard_after_forward") is False:
        out.set(
            "zero_optimization.stage3_max_reuse_distance",
            BIG,
            "fsdp_config.reshard_after_forward",
            "false: keep gathered parameters for the backward instead of re-gathering",
        )
        out.set(
            "zero_optimization.stage3_max_live_parameters",
            BIG,
            "fsdp_config.reshard_after_forward",
            "false: no cap on gathered parameters",
        )
    elif "reshard_after_forward" in fsdp:
        out.note(
            "fsdp_config.reshard_after_forward",
            "(default)",
            True,
            "ZeRO-3 releases parameters after use and re-gathers them in backward",
        )
    if facts.hidden_size:
        h = facts.hidden_size
        out.set(
            "zero_optimization.stage3_param_persistence_threshold",
            10 * h,
            "ds-tp",
            f"10 x hidden ({h}): small tensors (norms, biases) stay whole, matrices are sharded",
        )
        out.set("zero_optimization.stage3_prefetch_bucket_size", int(0.9 * h * h), "ds-tp", "0.9 x hidden^2")
        out.set("zero_optimization.reduce_bucket_size", h * h, "ds-tp", "hidden^2")
    else:
        out.note(
            "ds-tp",
            "zero_optimization.stage3_param_persistence_threshold / stage3_prefetch_bucket_size / reduce_bucket_size",
            "(train time)",
            "filled from the model's hidden size when it is loaded",
        )
    if layout.dp_replicate > 1:  # run.hpz_partition_size, before a user's JSON could change the stage
        out.set(
            "zero_optimization.zero_hpz_partition_size",
            layout.dp_shard,
            "dp_replicate_size",
            f"ZeRO++ hpZ: a secondary weight copy sharded within groups of {layout.dp_shard} ranks, so the "
            f"backward all-gather stays inside a replica; optimizer state still spans all {layout.dp} DP ranks",
        )


def _parallel(layout: Layout, model, out: Translation) -> None:
    if layout.tp > 1:
        out.set("tensor_parallel.autotp_size", layout.tp, "tensor_parallel_size", "DeepSpeed AutoTP shards linears")
        out.set(
            "tensor_parallel.vocab_parallel_lm_head",
            False,
            "ds-tp",
            "a tied head stays whole: ds-tp's loss reads every vocabulary logit",
        )
        specs = partition_config(model)
        if specs is not None:
            out.set(
                "tensor_parallel.partition_config",
                specs,
                "base_model (its family)",
                f"ds-tp's AutoTP layer specs for {model.model_type} (translators/family_rules.py): its HF "
                "tp_plan uses a style DeepSpeed does not implement",
            )
    if layout.cp > 1:
        out.set("sequence_parallel_size", layout.cp, "context_parallel_size", "Ulysses sequence parallel")


def _scheduler(cfg: dict, facts: TrainFacts, out: Translation) -> None:
    total = facts.total_steps or cfg.get("max_steps")
    schedule, findings = resolve_schedule(cfg, int(total) if total else None)
    out.findings.extend(findings)
    if schedule is None:
        return
    src = "lr_scheduler, warmup_steps/warmup_ratio, cosine_*_lr_ratio, lr_scheduler_kwargs"
    when = "" if schedule.warmup is not None and schedule.total else "; step counts filled at train time from the data"
    out.note(
        src,
        "(torch scheduler)",
        schedule.describe(),
        "handed to deepspeed.initialize, stepped after each "
        "optimizer step as HF Trainer steps it; no DeepSpeed scheduler block" + when,
    )


def merge_user_config(out: Translation, user: dict, source: str = "deepspeed") -> None:
    """Merge the user's `deepspeed:` JSON over the generated one, warning for every key it overrides.

    "auto" values (HF/Axolotl JSON files are full of them) keep the generated value.
    """

    def merge(dst: dict, src: dict, prefix: str) -> None:
        for key, value in src.items():
            dotted = f"{prefix}{key}"
            if value == "auto":
                continue
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                merge(dst[key], value, dotted + ".")
                continue
            if key in dst and dst[key] != value:
                out.findings.append(
                    Finding(
                        (source,),
                        f"overrides the generated {dotted} ({_short(dst[key])} -> {_short(value)})",
                        level="warning",
                    )
                )
            dst[key] = value
            out.rows.append(ExplainRow(source, dotted, value, "from the user's deepspeed config"))

    merge(out.config, user, "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 40 else text[:37] + "..."
