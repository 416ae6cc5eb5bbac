"""Which rows each rank trains on, and how they become tensors.

The global order is a seeded permutation per epoch; global batch b is rows order[b*G:(b+1)*G]
(G = micro x gas x dp). Micro-step m of data-parallel rank r takes the slice starting at
(m*dp + r)*micro. TP and CP ranks of one data-parallel rank read the same rows, so a layout
changes who computes, never what: same global batches, same order, for every layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ds_tp.labels import IGNORE  # noqa: F401  (re-exported)


@dataclass
class BatchOrder:
    rows: int
    micro: int
    gas: int
    dp: int
    seed: int
    steps_per_epoch: int
    lengths: np.ndarray | None = None  # group_by_length: rows of similar length share a global batch
    _orders: dict = field(default_factory=dict, repr=False)

    @property
    def global_batch(self) -> int:
        return self.micro * self.gas * self.dp

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's row order (cached: a permutation of 1M rows costs ~50 ms)."""
        if epoch not in self._orders:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.rows)
            if self.lengths is not None:
                order = length_grouped(order, self.lengths, self.micro * self.gas)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def global_rows(self, step: int) -> np.ndarray:
        """Row indices of optimizer step `step` (0-based), all ranks together."""
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch
        return self.order(epoch)[start:start + self.global_batch]

    def micro_rows(self, step: int, micro_step: int, dp_rank: int) -> np.ndarray:
        start = (micro_step * self.dp + dp_rank) * self.micro
        return self.global_rows(step)[start:start + self.micro]


def length_grouped(order: np.ndarray, lengths: np.ndarray, batch: int) -> np.ndarray:
    """HF Trainer's group_by_length (LengthGroupedSampler's algorithm, on ds-tp's seeded permutation):
    the shuffled rows are cut into megabatches of min(rows // (4 * batch), 50) batches (at least one;
    batch = micro x gas, the per-rank batch HF's sampler is given, so every layout gets the same order),
    each megabatch is sorted longest first, and the longest row of all is swapped to the very front,
    so the first step meets the peak memory at once."""
    mult = max(min(len(order) // (batch * 4), 50), 1)
    size = mult * batch
    megabatches = [sorted(order[i:i + size].tolist(), key=lambda r: -lengths[r]) for i in range(0, len(order), size)]
    longest = int(np.argmax([lengths[m[0]] for m in megabatches]))
    megabatches[0][0], megabatches[longest][0] = megabatches[longest][0], megabatches[0][0]
    return np.array([r for m in megabatches for r in m], dtype=order.dtype)


def trainable_tokens(labels: list[int]) -> int:
    """Tokens that contribute to the loss after the causal shift (the first label never does)."""
    return sum(1 for x in labels[1:] if x != IGNORE)


def collate(rows: list[dict], pad_id: int, multiple_of: int = 1, pad_to: int | None = None) -> dict:
    """Right-pad to the longest row (or pad_to), rounded up to `multiple_of` (CP shards the sequence).

    shift_labels are computed here, before any sequence sharding, so each CP shard knows the label
    of its last token. Padding has label -100 and continues position_ids, so it changes no loss.
    """
    longest = max(len(r["input_ids"]) for r in rows)
    length = max(longest, pad_to or 0)
    length = -(-length // multiple_of) * multiple_of
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    pos = torch.arange(length, dtype=torch.long).repeat(len(rows), 1)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        if "position_ids" in row:
            p = torch.tensor(row["position_ids"])
            pos[i, :n] = p
            pos[i, n:] = p[-1] + 1 + torch.arange(length - n)
    shift = torch.full_like(labels, IGNORE)
    shift[:, :-1] = labels[:, 1:]
    return {"input_ids": ids, "position_ids": pos, "shift_labels": shift}


def shard_sequence(batch: dict, cp_rank: int, cp: int) -> dict:
    """This CP rank's contiguous slice of the sequence dimension (Ulysses' layout)."""
    if cp == 1:
        return batch
    length = batch["input_ids"].shape[1] // cp
    return {k: v[:, cp_rank * length:(cp_rank + 1) * length] for k, v in batch.items()}
