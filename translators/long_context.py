"""Long-context memory: how the loss, the MLP and the activations are laid out, decided once.

Pure (no torch, no files): the ranks read ResolvedRun.long_context; validate reports the findings.
None of these choices changes a trained value, only what is held in memory at once (ALST, Arctic Long
Sequence Training, is the model: Ulysses + tiled MLP + sequence-tiled loss + activation offload).

- loss ........ "standard": full logits (tokens x vocab). chunked_cross_entropy: "fused" where the LM head's
                weight is a plain tensor on the rank (ZeRO 0-2, no TP): the head's matmul and the loss's
                gradient computed chunk by chunk in forward; "tiled" where it is ZeRO-3-partitioned or
                TP-split: the head module runs on one sequence tile at a time, under no_grad in forward
                and again per tile in backward (DeepSpeed's sequence_tiled_compute), so ZeRO-3 gathers
                and AutoTP's gather run as for any module call.
- mlp_tiles ... tiled_mlp: each decoder layer's MLP over this many sequence tiles (forward under no_grad,
                recomputed tile by tile in backward). Axolotl's default count: ceil(sequence_len / hidden);
                ds-tp divides the sequence by cp first (each rank holds its Ulysses shard). Always the same
                number of tiles on every rank (ZeRO-3 gathers weights per call: counts must agree).
- checkpointing "off" | "on" | "offload": offload keeps each checkpointed layer's input (and the few tensors
                saved outside the layers) in host memory until backward (torch.autograd.graph.save_on_cpu,
                pinned on CUDA; torch's checkpoint, reentrant or not, saves its inputs through such hooks).
                Axolotl's `gradient_checkpointing: offload` and `activation_offloading: true` both mean this.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ds_tp.errors import Finding


def axolotl_mlp_tiles(sequence_len: int, cp: int, hidden: int) -> int:
    """Axolotl's tile count when tiled_mlp_num_shards is unset: ceil(rank's sequence shard / hidden), >= 1."""
    return max(math.ceil(math.ceil(sequence_len / max(cp, 1)) / hidden), 1)


@dataclass(frozen=True)
class LongContext:
    loss: str = "standard"  # standard | fused | tiled
    loss_chunks: int = 8
    mlp_tiles: int = 0  # 0: each MLP computed whole; -1: Axolotl's count, the model's width not read yet
    checkpointing: str = "off"  # off | on | offload
    reentrant: bool = False

    def describe(self) -> str:
        parts = [
            {
                "standard": "loss on full logits",
                "fused": f"loss fused with the head in {self.loss_chunks} chunks",
                "tiled": f"loss over {self.loss_chunks} sequence tiles (head recomputed in backward)",
            }[self.loss]
        ]
        if self.mlp_tiles:
            count = "ceil(sequence_len / cp / hidden_size)" if self.mlp_tiles < 0 else self.mlp_tiles
            parts.append(f"MLP over {count} sequence tiles")
        parts.append(
            {
                "off": "no activation checkpointing",
                "on": "activation checkpointing",
                "offload": "activation checkpointing, layer inputs in host memory",
            }[self.checkpointing]
        )
        return "; ".join(parts)

    @classmethod
    def from_dict(cls, data: dict | None) -> "LongContext":
        return cls(**data) if data else cls()

    def to_dict(self) -> dict:
        return asdict(self)


def _offload_wanted(cfg: dict) -> tuple[bool, list[Finding]]:
    findings = []
    gc, off = cfg.get("gradient_checkpointing"), cfg.get("activation_offloading")
    if gc == "offload_disk" or off == "disk":
        key = ("gradient_checkpointing",) if gc == "offload_disk" else ("activation_offloading",)
        findings.append(Finding(key, "ds-tp offloads activations to host memory, not to disk", level="notice"))
    if off and not gc:
        findings.append(
            Finding(
                ("activation_offloading",),
                "needs gradient_checkpointing (Axolotl refuses it too)",
                "add gradient_checkpointing: true",
            )
        )
    return gc in ("offload", "offload_disk") or bool(off), findings


def resolve_long_context(
    cfg: dict, zero3: bool, tp: int, cp: int, hidden: int | None, tied: bool = False
) -> tuple[LongContext, list[Finding]]:
    findings: list[Finding] = []
    chunks = int(cfg.get("chunked_cross_entropy_num_chunks") or 8)
    loss = "standard"
    if cfg.get("chunked_cross_entropy") and not cfg.get("rl"):
        loss = "tiled" if zero3 or tp > 1 else "fused"
        if loss == "tiled" and tied:  # the head's gradient would be reduced before the embedding adds its share
            loss = "standard"
            findings.append(
                Finding(
                    ("chunked_cross_entropy",),
                    "not used with tied embeddings on a ZeRO-3 or TP layout: the standard loss",
                    level="warning",
                )
            )
    tiles = 0
    if cfg.get("tiled_mlp"):
        tiles = int(cfg.get("tiled_mlp_num_shards") or 0)
        if not tiles:
            seq = int(cfg.get("sequence_len") or 2048)
            tiles = axolotl_mlp_tiles(seq, cp, hidden) if hidden else -1  # -1: width not read yet
            count = f"{tiles} sequence tile(s)" if hidden else "ceil(sequence_len / cp / hidden_size) tiles"
            findings.append(
                Finding(
                    ("tiled_mlp",),
                    f"{count} per MLP (Axolotl's rule, on each rank's Ulysses "
                    "shard); set tiled_mlp_num_shards to choose",
                    level="notice",
                )
            )
        tiles = max(int(tiles), 1) if tiles != -1 else -1
        if cfg.get("tiled_mlp_use_original_mlp") is False:
            findings.append(
                Finding(
                    ("tiled_mlp_use_original_mlp",),
                    "ds-tp always tiles the model's own MLP "
                    "module (Axolotl's false swaps in a generic Llama MLP; same values)",
                    level="notice",
                )
            )
    elif cfg.get("tiled_mlp_num_shards") is not None:
        findings.append(Finding(("tiled_mlp_num_shards",), "no effect without tiled_mlp: true", level="warning"))
    offload, more = _offload_wanted(cfg)
    findings += more
    gc = bool(cfg.get("gradient_checkpointing"))
    reentrant = bool((cfg.get("gradient_checkpointing_kwargs") or {}).get("use_reentrant", False))
    checkpointing = "offload" if gc and offload else "on" if gc else "off"
    return LongContext(loss, chunks, tiles, checkpointing, reentrant), findings
