"""Sequence tiling and activation offload for long context (ResolvedRun.long_context decides; this runs it).

Each piece trades compute for memory and trains the same values:
- tiled_loss_sum: the LM head and cross-entropy one sequence tile at a time, through the head *module* (so a
  ZeRO-3-partitioned or AutoTP-split head gathers as it does for any call); DeepSpeed's sequence_tiled_compute
  runs the tiles under no_grad in forward and again, tile by tile, in backward. At most one tile's logits exist.
- TiledMLP: a decoder layer's MLP over a fixed number of sequence tiles, the same way (the intermediate
  activations, 3-4x the hidden width, exist for one tile at a time). Unlike DeepSpeed's TiledMLP (torch.chunk
  may return fewer pieces than asked), the tile count is exact, so every rank makes the same number of module
  calls: ZeRO-3 gathers weights per call and the counts must agree across ranks.
- activation_offload: tensors saved for backward kept in host memory (torch's save_on_cpu); under gradient
  checkpointing those are the checkpointed layers' inputs (torch's checkpoint saves them through such hooks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def tiled_loss_sum(head, hidden: torch.Tensor, labels: torch.Tensor, tiles: int, autocast) -> torch.Tensor:
    """sum over tokens of CE(head(hidden), labels) (label -100 ignored), one tile's logits at a time."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import sequence_tiled_compute

    def one_tile(hidden_states, target):
        with autocast():
            logits = head(hidden_states)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                               reduction="sum")

    flat = hidden.reshape(1, -1, hidden.shape[-1])  # batch 1: each tile's gradient is written in place
    target = labels.reshape(1, -1)
    return sequence_tiled_compute(one_tile, flat.shape[1], tiles, {"hidden_states": flat, "target": target}, {},
                                  "hidden_states", list(head.parameters()), output_unshard_dimension=0,
                                  output_reduction="sum")


class TiledMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, x, tiles, params):
        ctx.run, ctx.tiles = run, tiles
        ctx.params = [p for p in params if p.requires_grad]
        ctx.save_for_backward(x)
        flat = x.reshape(-1, x.shape[-1])
        with torch.no_grad():
            out = torch.cat([run(piece) for piece in torch.tensor_split(flat, tiles)])
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        flat = x.detach().reshape(-1, x.shape[-1])
        grads = grad.reshape(-1, grad.shape[-1])
        x_grad = torch.zeros_like(flat)
        start = 0
        for i, (piece, g) in enumerate(zip(torch.tensor_split(flat, ctx.tiles), torch.tensor_split(grads, ctx.tiles))):
            for p in ctx.params:  # ZeRO: reduce the weights' gradient once, after the last tile added its share
                p.ds_grad_is_ready = i == ctx.tiles - 1
            piece = piece.detach().requires_grad_(x.requires_grad)
            with torch.enable_grad():
                out = ctx.run(piece)
            torch.autograd.backward(out, g)
            if piece.grad is not None:
                x_grad[start:start + piece.shape[0]] = piece.grad
            start += piece.shape[0]
        return None, x_grad.view_as(x), None, None


def _tiled_forward(mlp, original, tiles):
    params = list(mlp.parameters())

    def forward(x):  # tiled in eval too: the same calls on every rank, one tile's activations at a time
        if torch.is_grad_enabled() and not x.requires_grad and any(p.requires_grad for p in params):
            return original(x)  # only the MLP's own weights train (frozen layers below): autograd must see them
        return TiledMLP.apply(original, x, tiles, params)
    return forward


def install_tiled_mlp(model, tiles: int, log) -> int:
    """Route each decoder layer's dense MLP through TiledMLP; returns how many. MoE blocks (routed experts)
    stay whole: their tokens are already split per expert."""
    done, skipped = 0, 0
    for name, module in model.named_modules():
        if not name.endswith(".mlp") or ".layers." not in f".{name}":
            continue
        if hasattr(module, "experts") or hasattr(module, "router"):
            skipped += 1
            continue
        module.forward = _tiled_forward(module, module.forward, tiles)
        done += 1
    log(f"tiled_mlp: {done} MLP(s) over {tiles} sequence tile(s) each"
        + (f"; {skipped} MoE block(s) computed whole" if skipped else ""))
    return done


def activation_offload(device: torch.device):
    """Tensors saved for backward live in host memory until backward needs them (pinned on CUDA)."""
    return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")
