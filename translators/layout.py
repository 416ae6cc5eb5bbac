"""The parallel layout: dp_replicate x dp_shard x tp x cp = world. The one place that checks it.

Rank order (innermost first): tp, cp, dp_shard, dp_replicate. Adjacent ranks share a tensor-parallel
group, so TP (the chattiest dimension) stays inside a node; replicas are the outermost dimension,
so hpZ's replicate traffic is the only thing that crosses nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ds_tp.errors import Finding

LAYOUT_KEYS = ("dp_replicate_size", "dp_shard_size", "tensor_parallel_size", "context_parallel_size")


@dataclass(frozen=True)
class Layout:
    dp_replicate: int
    dp_shard: int
    tp: int
    cp: int
    dp_shard_inferred: bool = False

    @property
    def world(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp * self.cp

    @property
    def dp(self) -> int:
        """Data-parallel size: ranks that see different batches."""
        return self.dp_replicate * self.dp_shard

    def product(self) -> str:
        return (
            f"dp_replicate({self.dp_replicate}) * dp_shard({self.dp_shard}) * tp({self.tp}) "
            f"* cp({self.cp}) = {self.world}"
        )

    def coords(self, rank: int) -> dict[str, int]:
        """This rank's position on each axis."""
        tp_rank = rank % self.tp
        cp_rank = (rank // self.tp) % self.cp
        shard = (rank // (self.tp * self.cp)) % self.dp_shard
        replica = rank // (self.tp * self.cp * self.dp_shard)
        return {
            "tp": tp_rank,
            "cp": cp_rank,
            "dp_shard": shard,
            "dp_replicate": replica,
            "dp": replica * self.dp_shard + shard,
        }

    def groups(self, axis: str) -> list[list[int]]:
        """Rank sets that vary along one axis (tp, cp, dp) with every other coordinate fixed."""
        others = {"tp": ("cp", "dp"), "cp": ("tp", "dp"), "dp": ("tp", "cp")}[axis]
        buckets: dict[tuple, list[int]] = {}
        for rank in range(self.world):
            c = self.coords(rank)
            buckets.setdefault(tuple(c[o] for o in others), []).append(rank)
        return sorted(buckets.values())


def effective_batch(micro_batch_size: int, gradient_accumulation_steps: int, layout: Layout) -> int:
    """Sequences per optimizer step: micro x gas x world / (tp x cp) (TP and CP ranks share a batch)."""
    return micro_batch_size * gradient_accumulation_steps * layout.dp


def _int(cfg: dict, key: str) -> int | None:
    value = cfg.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def resolve_world(cfg: dict, requested: int | None, gpu_count: int | None) -> int | None:
    """How many ranks a run has: the one rule for validate, translate, plan and train.

    requested (--num-processes, --world-size, a hostfile's slots) wins; else the layout's product when
    dp_shard_size is set; else every GPU of the machine when they fit the rest of the layout
    (dp_replicate x tp x cp divides them), else that rest alone (dp_shard 1). gpu_count None (validate
    without a device) means "no GPUs known": the layout's own product.
    """
    if requested:
        return requested
    rest = (
        (_int(cfg, "dp_replicate_size") or 1)
        * (_int(cfg, "tensor_parallel_size") or 1)
        * (_int(cfg, "context_parallel_size") or 1)
    )
    shard = _int(cfg, "dp_shard_size")
    if shard:
        return rest * shard
    if gpu_count and gpu_count >= rest and gpu_count % rest == 0:
        return gpu_count
    return rest


def resolve_layout(cfg: dict, world_size: int | None) -> tuple[Layout | None, list[Finding]]:
    """The layout for this config and world size (None: the layout's own product).

    dp_shard_size, when unset, is inferred as world / (dp_replicate x tp x cp), as Axolotl does.
    Every error prints all four factors and the world size.
    """
    tp = _int(cfg, "tensor_parallel_size") or 1
    cp = _int(cfg, "context_parallel_size") or 1
    rep = _int(cfg, "dp_replicate_size") or 1
    shard = _int(cfg, "dp_shard_size")
    anchor = next(((k,) for k in LAYOUT_KEYS if k in cfg), ())
    if shard is None:
        if world_size is None:
            return Layout(rep, 1, tp, cp, dp_shard_inferred=True), []
        rest = rep * tp * cp
        if world_size % rest:
            return None, [
                Finding(
                    anchor,
                    f"cannot infer dp_shard_size: world {world_size} is not divisible by "
                    f"dp_replicate({rep}) * tp({tp}) * cp({cp}) = {rest}",
                    "change the sizes or the number of processes",
                )
            ]
        return Layout(rep, world_size // rest, tp, cp, dp_shard_inferred=True), []
    layout = Layout(rep, shard, tp, cp)
    if world_size is not None and layout.world != world_size:
        return None, [
            Finding(
                anchor,
                f"{layout.product()} != world {world_size}",
                f"the product of the sizes must equal the number of processes ({world_size})",
            )
        ]
    return layout, []
