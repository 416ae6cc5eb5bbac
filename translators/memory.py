"""Memory per GPU of a training run, from the model's shape, the config's values and a Layout.

Pure, like the rest of translators/: a config.json-like dict in, bytes out; no torch, no files.
Where the formulas come from:

- Model states: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
  Parameter Models", sec. 3 (3.1): mixed-precision Adam holds 2 + 2 + 12 bytes per parameter
  (16-bit weights and gradients; fp32 master weights, momentum and variance); stage 3 divides all
  three by the data-parallel degree. In fp32 there is no master copy (DeepSpeed updates the weights
  in place): 4 + 4 + 8. ds-tp's SGD has no momentum: its state is the fp32 master copy alone.
- Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", sec. 4: count every tensor autograd keeps per layer; tensor parallelism divides those
  inside attention and the MLP (not the norms, AutoTP has no sequence parallelism); full
  recomputation keeps only each layer's input, plus one layer's worth recomputed during backward.
  The count is redone here for a Llama layer as transformers runs it (RMSNorm upcast to fp32,
  SwiGLU MLP, grouped-query attention through sdpa/flash, no dropout), so it is not the paper's
  34sbh + 5as^2b.
- Logits: not the paper's. The loss keeps the fp32 log-softmax (4 bytes per token x vocab) and
  backward adds its fp32 gradient (4) next to the lm_head output (activation dtype); AutoTP gathers
  the lm_head output, so TP does not divide it; CP (Ulysses) divides the sequence.
- FRAMEWORK_OVERHEAD_GIB is an assumption, not a measurement: CUDA context and kernels, NCCL
  communicators and their buffers, and the caching allocator's fragmentation floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .adapter import QUANT_BYTES, adapter_params
from .layout import Layout
from .model_shape import ModelShape
from .resolved import resolve_run

GIB = 2**30
FRAMEWORK_OVERHEAD_GIB = 3.0
MARGIN = 0.15  # a layout "fits comfortably" below 85% of the GPU: spikes and fragmentation eat the rest
MAX_TP_CP = 8  # TP and CP groups stay inside one 8-GPU node (the chattiest traffic)
STAGE0_ALLREDUCE_BUCKET = 500_000_000  # elements: DeepSpeed's default allreduce_bucket_size
ASSUMED_GPU = {"accelerator": "cuda", "bf16": True, "name": "the planned GPUs"}  # bf16: auto -> bf16

# Real shapes (the models' config.json), so `plan` never asks the hub.
# fmt: off
PRESETS = {
    "tinyllama-1.1b": dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "llama-3.1-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "llama-3.1-405b": dict(model_type="llama", hidden_size=16384, intermediate_size=53248, num_hidden_layers=126,
                           num_attention_heads=128, num_key_value_heads=8, vocab_size=128256,
                           tie_word_embeddings=False),
    # MoE: 8 experts of 14336, 2 a token (46.7B, 12.9B active); 128 experts of 768, 8 a token (30.5B, 3.3B active)
    "mixtral-8x7b": dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False,
                         num_local_experts=8, num_experts_per_tok=2),
    "qwen3-30b-a3b": dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                          num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                          vocab_size=151936, tie_word_embeddings=False, num_experts=128, num_experts_per_tok=8),
}
# fmt: on
HUB_PRESETS = {  # lower-case hub id -> preset
    **{
        f"meta-llama/{p}llama-3.1-{size}{s}": f"llama-3.1-{size}"
        for p in ("", "meta-")
        for size in ("8b", "70b", "405b")
        for s in ("", "-instruct")
    },
    **{f"mistralai/mixtral-8x7b{s}-v0.1": "mixtral-8x7b" for s in ("", "-instruct")},
    **{f"qwen/qwen3-30b-a3b{s}": "qwen3-30b-a3b" for s in ("", "-base", "-instruct-2507")},
    **{
        f"tinyllama/{name}": "tinyllama-1.1b"
        for name in ("tinyllama-1.1b-chat-v1.0", "tinyllama_v1.1", "tinyllama-1.1b-intermediate-step-1431k-3t")
    },
}


def bytes_per_param(half: bool, optimizer: str) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) per parameter, ZeRO paper sec. 3.1. half: 16-bit weights
    and gradients with an fp32 master copy (bf16/fp16 blocks); torch autocast keeps fp32 ones."""
    moments = 0 if optimizer == "sgd" else 8  # AdamW: momentum + variance in fp32
    return (2, 2, 4 + moments) if half else (4, 4, moments)


@dataclass(frozen=True)
class Estimate:
    """Bytes on one GPU (the largest rank: TP rank 0 and CP rank 0 are like the others)."""

    layout: Layout
    precision: str
    parameters: int
    gradients: int
    optimizer: int
    hpz_copy: int  # hpZ: the secondary 16-bit weight partition
    buffers: int  # ZeRO-3 gathered weights + reduce bucket, or stage 0's all-reduce bucket
    activations: int
    logits: int
    overhead: int
    notes: tuple[str, ...] = ()
    load_peak: int = 0  # a quantized base held whole while loading, before ZeRO-3 partitions it

    @property
    def model_states(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.hpz_copy

    @property
    def total(self) -> int:
        steady = self.model_states + self.buffers + self.activations + self.logits + self.overhead
        return max(steady, self.load_peak + self.overhead)


def activation_bytes(
    shape: ModelShape,
    seq: int,
    micro: int,
    layout: Layout,
    act_bytes: int,
    checkpointing: bool,
    attn: str | None = None,
) -> tuple[int, int]:
    """(activations kept for backward, logits at the loss's peak) on one rank."""
    tp, cp, e = layout.tp, layout.cp, act_bytes
    tokens = micro * math.ceil(seq / cp)  # Ulysses: each rank holds seq/cp tokens outside attention
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    norm = 4 + 2 * e  # HF RMSNorm keeps its input in fp32, the normalised value and the weighted output
    per_token = (
        2 * h * norm  # the two norms of a layer (not split by TP)
        + (q + 2 * kv) * e / tp  # q and k after RoPE, v: kept by attention
        + 2 * q * e / tp  # attention output: kept by the kernel and, transposed, by o_proj
        + 4 * shape.active_mlp * e / tp
    )  # gate, up, silu(gate), silu(gate) * up (an MoE token's experts: experts_per_token of them)
    layer = tokens * per_token
    if attn == "eager":  # the softmax probabilities, heads / (tp x cp) over the whole sequence
        layer += micro * shape.heads / (tp * cp) * seq * seq * e
    final_norm = tokens * h * norm
    if checkpointing:  # only each layer's input, plus one layer recomputed during backward
        kept = shape.layers * tokens * h * e + layer + final_norm
    else:
        kept = shape.layers * layer + final_norm
    logits = tokens * shape.vocab * (8 + e)
    return int(kept), int(logits)


def estimate_memory(
    model: dict | ModelShape,
    cfg: dict,
    layout: Layout,
    *,
    device: dict | None = None,
    overhead_bytes: int | None = None,
) -> Estimate:
    """Bytes per GPU for this model, config values and layout. `device` resolves bf16: auto
    (default: GPUs with bf16); overhead_bytes defaults to FRAMEWORK_OVERHEAD_GIB."""
    shape = model if isinstance(model, ModelShape) else ModelShape.from_config(model)
    run = resolve_run(cfg, layout, device or ASSUMED_GPU, model=shape)
    optimizer = "sgd" if cfg.get("optimizer") == "sgd" else "adamw"
    w, g, o = bytes_per_param(run.precision.half_weights, optimizer)
    per_rank = shape.params_per_tp_rank(layout.tp)
    fsdp = cfg.get("fsdp_config") or {}
    notes: list[str] = []
    zero3 = run.zero3
    # DeepSpeed partitions over its sequence-data-parallel group: every dp and cp rank holds a slice.
    shards = run.zero_partitions
    params, grads, optim = per_rank * w / shards, per_rank * g / shards, per_rank * o / shards
    weights = per_rank * w  # every weight of one TP rank, before ZeRO partitions it
    load_peak = 0.0
    if run.adapter is not None:  # only the adapter trains: gradients and optimizer state for it alone
        counts = adapter_params(run.adapter, shape, layout.tp)
        base = counts.frozen_quantizable * QUANT_BYTES.get(run.adapter.quant or "", w) + counts.frozen_other * w
        weights = counts.trainable * w + base
        params, grads, optim = weights / shards, counts.trainable * g / shards, counts.trainable * o / shards
        notes.append(
            f"adapter {run.adapter.kind}: {counts.trainable / 1e6:.1f}M of {(counts.trainable + per_rank) / 1e6:.0f}M "
            f"parameters per TP rank train; the frozen base takes {base / GIB:.1f} GiB before ZeRO partitions it"
            + (" (4-bit nf4)" if run.adapter.quant == "4bit" else " (8-bit)" if run.adapter.quant else "")
            + ("; lora_target_modules is a regex: every linear layer counted" if counts.assumed_targets else "")
        )
        if run.adapter.quant and zero3:  # bitsandbytes loads the base whole; deepspeed.initialize partitions it
            load_peak = weights
            notes.append(
                f"the quantized base loads whole on each rank ({weights / GIB:.1f} GiB) before ZeRO-3 partitions it"
            )
    hpz = weights / run.hpz_partition_size if run.hpz_partition_size else 0
    if zero3 and fsdp.get("offload_params"):
        params, hpz = 0, 0
        notes.append("offload_params: weight partitions live in CPU memory")
    if zero3 and fsdp.get("reshard_after_forward") is False:
        live = per_rank  # nothing is released between forward and backward
        notes.append("reshard_after_forward: false keeps every gathered weight")
    elif zero3:  # the module in use (the embedding is gathered whole) + the prefetch bucket (0.9 h^2)
        live = (
            max(shape.embedding_params, shape.layer_linear_params / layout.tp + shape.layer_expert_params)
            + 0.9 * shape.hidden**2
        )
    else:
        live = 0
    buffers = live * w + (shape.hidden**2 * g if zero3 else 0)
    if not zero3 and layout.dp > 1:
        buffers = min(per_rank, STAGE0_ALLREDUCE_BUCKET) * g
    sequences = int(cfg.get("micro_batch_size", 1))
    if run.preference is not None:  # rl: each row is two sequences (chosen and rejected) in one forward
        sequences *= 2
        if run.preference.reference == "frozen-copy":  # a second copy of the weights, partitioned like the policy
            params += per_rank * w / (shards if zero3 else 1)
            notes.append(
                f"rl: {run.preference.method}: the frozen reference model adds "
                f"{per_rank * w / (shards if zero3 else 1) / GIB:.1f} GiB (precompute_ref_log_probs: none)"
            )
        notes.append(f"rl: {run.preference.method}: activations and logits for 2 x micro_batch_size sequences")
    act_bytes = run.precision.activation_bytes
    acts, logits = activation_bytes(
        shape,
        int(cfg.get("sequence_len", 512)),
        sequences,
        layout,
        act_bytes,
        bool(cfg.get("gradient_checkpointing")),
        cfg.get("attn_implementation"),
    )
    overhead = int(FRAMEWORK_OVERHEAD_GIB * GIB) if overhead_bytes is None else overhead_bytes
    return Estimate(
        layout,
        run.precision.name,
        int(params),
        int(grads),
        int(optim),
        int(hpz),
        int(buffers),
        acts,
        logits,
        overhead,
        tuple(notes),
        int(load_peak),
    )


def layout_problems(shape: ModelShape, tp: int, cp: int, seq: int) -> list[str]:
    """Why tp/cp cannot run this model: the model's own rule (ModelShape.layout_problems) and the
    sequence length's, as validate and train apply them."""
    found = [why for _, why in shape.layout_problems(tp, cp)]
    if cp > 1 and seq % cp:
        found.append(f"sequence_len {seq} not divisible by cp {cp}")
    return found


@dataclass(frozen=True)
class Ranked:
    estimate: Estimate
    fits: bool
    comfortable: bool  # under (1 - MARGIN) of the GPU
    why: str


def candidate_layouts(shape: ModelShape, seq: int, gpus: int, per_node: int | None = None) -> list[Layout]:
    """dp_replicate x dp_shard x tp x cp = gpus with tp, cp powers of two, tp x cp <= 8 and inside one
    node (the hostfile check refuses a TP/CP group split over hosts), runnable by the model's shape
    (TP together with CP included: ds-tp composes them)."""
    out = []
    node = min(gpus, per_node or gpus)
    for tp in (1, 2, 4, 8):
        for cp in (1, 2, 4, 8):
            if tp * cp > min(MAX_TP_CP, node) or gpus % (tp * cp) or node % (tp * cp):
                continue
            if layout_problems(shape, tp, cp, seq):
                continue
            rest = gpus // (tp * cp)
            out += [Layout(rep, rest // rep, tp, cp) for rep in range(1, rest + 1) if rest % rep == 0]
    return out


def _why(est: Estimate, gpu_bytes: float, per_node: int) -> str:
    lay, free = est.layout, 1 - est.total / gpu_bytes
    if free < 0:
        parts = [f"does not fit: needs {est.total / GIB:.1f} of {gpu_bytes / GIB:g} GiB"]
    else:
        parts = [f"{free:.0%} free" + ("" if free >= MARGIN else f" (under {MARGIN:.0%}: fragmentation risk)")]
    if lay.tp * lay.cp == 1:
        parts.append("no TP/CP traffic")
    else:
        parts.append(f"TP {lay.tp}: all-reduces per layer" if lay.tp > 1 else f"CP {lay.cp}: Ulysses all-to-all")
    group = lay.dp_shard * lay.tp * lay.cp
    if lay.dp_shard == 1:
        parts.append("stage 0: whole model states per rank")
    else:
        span = "inside one node" if group <= per_node else f"across {math.ceil(group / per_node)} nodes"
        parts.append(f"ZeRO-3 over {lay.dp * lay.cp}, weight all-gathers {span}")
    if lay.dp_replicate > 1 and lay.dp_shard > 1:
        parts.append(
            f"hpZ: +{est.hpz_copy / GIB:.1f} GiB secondary weights"
            + (", no gain in one node" if lay.world <= per_node else "")
        )
    return "; ".join(parts)


def all_layouts(
    model: dict | ModelShape,
    cfg: dict,
    gpus: int,
    gpu_memory_gib: float,
    *,
    gpus_per_node: int = 8,
    device: dict | None = None,
) -> list[Ranked]:
    """Every candidate layout, best first: fitting with margin, then fitting tightly, then the
    closest misses. Among those that fit: smaller tp x cp (less TP/CP traffic, more data
    parallel), TP before CP (it divides weights too; CP is for long sequences), weight all-gathers
    inside one node (hpZ when the shard group would span nodes), fewer replicas (each holds a
    secondary copy), then less memory."""
    shape = model if isinstance(model, ModelShape) else ModelShape.from_config(model)
    gpu_bytes = gpu_memory_gib * GIB
    node = min(gpus, gpus_per_node)
    ranked = []
    for lay in candidate_layouts(shape, int(cfg.get("sequence_len", 512)), gpus, node):
        est = estimate_memory(shape, cfg, lay, device=device)
        ranked.append(
            Ranked(est, est.total <= gpu_bytes, est.total <= (1 - MARGIN) * gpu_bytes, _why(est, gpu_bytes, node))
        )

    def key(r: Ranked):
        lay = r.estimate.layout
        if not r.fits:  # closest misses first
            return (True, True, r.estimate.total)
        in_node = lay.dp_shard > 1 and lay.dp_shard * lay.tp * lay.cp <= node  # as _why says
        return (False, not r.comfortable, lay.tp * lay.cp, lay.cp > 1, not in_node, lay.dp_replicate, r.estimate.total)

    return sorted(ranked, key=key)


def rank_layouts(
    model: dict | ModelShape,
    cfg: dict,
    gpus: int,
    gpu_memory_gib: float,
    *,
    gpus_per_node: int = 8,
    device: dict | None = None,
) -> list[Ranked]:
    """The layouts of `gpus` GPUs that fit in gpu_memory_gib each, best first (see all_layouts)."""
    return [
        r for r in all_layouts(model, cfg, gpus, gpu_memory_gib, gpus_per_node=gpus_per_node, device=device) if r.fits
    ]


def smallest_fitting(
    model: dict | ModelShape, cfg: dict, gpus: int, gpu_memory_gib: float, *, gpus_per_node: int = 8, limit: int = 8192
) -> tuple[int, Ranked] | None:
    """The first of 2x, 4x, ... `gpus` GPUs (up to `limit`) on which some layout fits, and its best."""
    count = gpus * 2
    while count <= limit:
        fitting = rank_layouts(model, cfg, count, gpu_memory_gib, gpus_per_node=gpus_per_node)
        if fitting:
            return count, fitting[0]
        count *= 2
    return None
