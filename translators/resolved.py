"""The resolved run: every decision about how a config runs, made once, for the ranks' device.

`resolve_run` turns (config values, layout, target device, the user's `deepspeed:` JSON, the model's
shape when known) into one frozen ResolvedRun. translate, plan, validate's rules, the launcher,
every rank, the loop, checkpoint and export read its fields and predicates; none decides again.
It is written into the run's plan file (`to_dict`) and shown by `translate --explain` and
`train --dry-run`. Pure: no torch, no files.

Where each decision lives:
- world size ............ layout.resolve_world (the same rule for validate, translate, plan, train)
- layout and its groups .. layout.resolve_layout / Layout
- ZeRO stage ............. zero_stage() below (3 exactly when dp_shard > 1; a user's JSON may override)
- precision, tf32 ........ resolve_precision() below
- model shape ............ model_shape.ModelShape.from_config
- trainable set .......... ResolvedRun.trainable ("full", unfrozen_parameters, or the adapter's line)
- adapter ................ adapter.resolve_adapter (LoRA / QLoRA: peft's config and the base's quantization)
- preference tuning ...... preference.resolve_preference (rl:: the loss, its hyperparameters, the reference)
- long-context memory .... long_context.resolve_long_context (chunked/tiled loss, tiled MLP, activation offload)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .adapter import Adapter, resolve_adapter
from .layout import Layout
from .long_context import LongContext, resolve_long_context
from .model_shape import ModelShape
from .preference import Preference, resolve_preference
from .trainable import trainable_summary


@dataclass(frozen=True)
class Precision:
    """How the ranks compute. name: bf16 (DeepSpeed's bf16 block), bf16-autocast (fp32 weights and
    optimizer, torch autocast in forward), fp16 (dynamic loss scaling) or fp32."""

    name: str
    why: str
    tf32: bool

    @property
    def half_weights(self) -> bool:
        """Weights and gradients held in 16 bits (with an fp32 master copy in the optimizer)."""
        return self.name in ("bf16", "fp16")

    @property
    def activation_bytes(self) -> int:
        return 4 if self.name == "fp32" else 2

    @property
    def autocast_dtype(self) -> str | None:
        return "bfloat16" if self.name == "bf16-autocast" else None


def resolve_precision(cfg: dict, device: dict, world: int) -> Precision:
    """bf16/fp16 "auto" against the ranks' device, as Axolotl does: bf16 where supported, fp16 on
    older GPUs, fp32 on CPU (half precision is slower there). On one device bf16 runs as torch
    autocast: the bf16 block copies every gradient into fp32 buffers each step, autocast keeps fp32
    weights and gradients instead; measured on one H100 (TinyLlama-1.1B shape): +7% tokens/s,
    +3.3 GiB (benchmarks/README.md)."""
    bf16, fp16 = cfg.get("bf16", "auto"), cfg.get("fp16")
    if bf16 is True:
        name, why = "bf16", "bf16: true"
    elif fp16 is True:
        name, why = "fp16", "fp16: true"
    elif bf16 == "auto" and device.get("bf16"):
        name, why = "bf16", f"bf16: auto and {device.get('name', 'the device')} supports bf16"
    elif bf16 == "auto" and device.get("accelerator") == "cuda":
        name, why = "fp16", f"bf16: auto and {device.get('name', 'the GPU')} lacks bf16: fp16 (as Axolotl)"
    elif bf16 == "auto":
        name, why = "fp32", "bf16: auto on a machine without a GPU: fp32 (CPU half precision is slower)"
    else:
        name, why = "fp32", "bf16 and fp16 off"
    if name == "bf16" and world == 1:
        name, why = "bf16-autocast", why + "; one device: torch autocast instead of the bf16 block (+7% on one H100)"
    tf32 = cfg.get("tf32", "auto")
    return Precision(name, why, bool(device.get("tf32")) if tf32 == "auto" else bool(tf32))


def zero_stage(layout: Layout, user_deepspeed: dict | None = None) -> tuple[int, str]:
    """(stage, why): ZeRO-3 exactly when there is a shard group (dp_shard > 1), else stage 0; a
    `deepspeed:` JSON that sets zero_optimization.stage overrides it (its merge warns)."""
    user = ((user_deepspeed or {}).get("zero_optimization") or {}).get("stage")
    if isinstance(user, int) and not isinstance(user, bool):
        return user, f"zero_optimization.stage {user} from the user's deepspeed config"
    if layout.dp_shard > 1:
        return 3, f"dp_shard_size {layout.dp_shard}: parameters, gradients and optimizer state sharded (FSDP's role)"
    if layout.dp_replicate > 1:
        return 0, f"dp_replicate {layout.dp_replicate} with dp_shard 1 is plain data parallel: stage 0"
    return 0, (
        "data-parallel shard group of 1: nothing to shard, so stage 0 (ZeRO-3 ran 2.25x slower than "
        "ZeRO-0 for a 1.1B model on one H100)"
    )


@dataclass(frozen=True)
class ResolvedRun:
    layout: Layout
    device: dict  # the ranks' device facts (device.py), not necessarily the launching host's
    precision: Precision
    zero_stage: int
    zero_why: str
    fused_adamw: bool  # adamw_torch_fused on CUDA
    trainable: str = "full"
    model: ModelShape | None = None
    adapter: Adapter | None = None  # LoRA / QLoRA: the base is frozen and only the adapter trains
    reduce_scatter: bool = True  # zero_optimization.reduce_scatter (DeepSpeed's default; a user's JSON may turn it off)
    attention: str | None = None  # the attention implementation the ranks load (decided before launch)
    preference: Preference | None = None  # rl: dpo/ipo/orpo/simpo/kto; None: the supervised loss
    long_context: LongContext = LongContext()  # how the loss, MLP and activations are held (memory only)

    @property
    def world(self) -> int:
        return self.layout.world

    @property
    def zero3(self) -> bool:
        return self.zero_stage == 3

    @property
    def hpz_partition_size(self) -> int | None:
        """ZeRO++ hpZ: the secondary weight copy is sharded within groups of dp_shard ranks."""
        return self.layout.dp_shard if self.zero3 and self.layout.dp_replicate > 1 else None

    @property
    def head_is_rank_local(self) -> bool:
        """The LM head's weight is a plain tensor on every rank (not ZeRO-3-partitioned, not TP-split):
        what the chunked cross-entropy needs."""
        return not self.zero3 and self.layout.tp == 1

    @property
    def sequence_divisor(self) -> int:
        """Every batch's length is padded to a multiple of this (Ulysses shards the sequence)."""
        return self.layout.cp

    @property
    def loads_partitioned(self) -> bool:
        """Weights are partitioned while the model is built (HF's ZeRO-3 integration). AutoTP needs whole
        weights to split, and hpZ's secondary copies are made at partition time and would keep the random
        init (measured: the first loss differs): those layouts load whole and deepspeed.initialize partitions."""
        return self.zero3 and self.layout.tp == 1 and self.hpz_partition_size is None

    @property
    def gradient_divisor(self) -> int:
        """Ranks DeepSpeed divides the summed gradient by (DeepSpeed 0.19.8, measured by the parity tests'
        gradient norms): every rank of the sequence-data-parallel group (dp x cp) for ZeRO-3's
        reduce-scatter, which applies no sequence-parallel correction; dp alone for stage 0, stages 1-2
        and ZeRO-3 without reduce-scatter, which divide by (dp x cp) / sp and so sum over the CP ranks.
        The loop scales each rank's loss by gas x this / global tokens, so the step's gradient is the
        token mean over the global batch whatever the layout."""
        if self.zero3 and self.reduce_scatter:
            return self.layout.dp * self.layout.cp
        return self.layout.dp

    @property
    def optimizer_holds_model_params(self) -> bool:
        """The optimizer steps the model's own parameter tensors: no ZeRO flat partitions and no 16-bit
        weights with an fp32 master copy. Per-parameter optimizer options (bitsandbytes' 32-bit
        embeddings, as HF Trainer sets them) can only apply then."""
        return self.zero_stage == 0 and not self.precision.half_weights

    @property
    def zero_partitions(self) -> int:
        """Ranks one TP rank's model states are partitioned over: DeepSpeed's sequence-data-parallel group."""
        return self.layout.dp * self.layout.cp if self.zero3 else 1

    def with_adapter(self, adapter: Adapter | None) -> "ResolvedRun":
        """The same run with the adapter's targets resolved against the model (prepare does it)."""
        return replace(self, adapter=adapter, trainable=adapter.describe() if adapter else self.trainable)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layout"] = asdict(self.layout)
        out["derived"] = {
            "zero3": self.zero3,
            "hpz_partition_size": self.hpz_partition_size,
            "head_is_rank_local": self.head_is_rank_local,
            "sequence_divisor": self.sequence_divisor,
            "loads_partitioned": self.loads_partitioned,
            "zero_partitions": self.zero_partitions,
            "optimizer_holds_model_params": self.optimizer_holds_model_params,
            "gradient_divisor": self.gradient_divisor,
        }
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ResolvedRun":
        model = data.get("model")
        return cls(
            layout=Layout(**data["layout"]),
            device=data["device"],
            precision=Precision(**data["precision"]),
            zero_stage=data["zero_stage"],
            zero_why=data["zero_why"],
            fused_adamw=data["fused_adamw"],
            trainable=data.get("trainable", "full"),
            model=ModelShape(**model) if model else None,
            adapter=Adapter(**data["adapter"]) if data.get("adapter") else None,
            reduce_scatter=data.get("reduce_scatter", True),
            attention=data.get("attention"),
            preference=Preference.from_dict(data.get("preference")),
            long_context=LongContext.from_dict(data.get("long_context")),
        )


def resolve_run(
    cfg: dict, layout: Layout, device: dict, user_deepspeed: dict | None = None, model: ModelShape | None = None
) -> ResolvedRun:
    stage, why = zero_stage(layout, user_deepspeed)
    adapter, _ = resolve_adapter(cfg)  # its findings were reported by validation
    long_context = resolve_long_context(
        cfg, stage == 3, layout.tp, layout.cp, model.hidden if model else None, bool(model and model.tied)
    )[0]
    fused = cfg.get("optimizer", "adamw_torch_fused") == "adamw_torch_fused" and device.get("accelerator") == "cuda"
    return ResolvedRun(
        layout=layout,
        device=dict(device),
        precision=resolve_precision(cfg, device, layout.world),
        zero_stage=stage,
        zero_why=why,
        fused_adamw=fused,
        trainable=adapter.describe() if adapter else trainable_summary(cfg),
        model=model,
        adapter=adapter,
        preference=resolve_preference(cfg)[0],
        long_context=long_context,
        reduce_scatter=((user_deepspeed or {}).get("zero_optimization") or {}).get("reduce_scatter", True) is not False,
    )
