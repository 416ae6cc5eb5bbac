"""group_by_length orders rows as HF Trainer's LengthGroupedSampler does, given the same shuffle."""
import numpy as np
import pytest
import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from ds_tp.train.batches import BatchOrder, length_grouped


@pytest.mark.parametrize("rows, batch", [(1000, 4), (37, 8), (3, 2), (5000, 2)])
def test_same_order_as_hf_for_the_same_shuffle(rows, batch, monkeypatch):
    rng = np.random.default_rng(rows)
    lengths = rng.integers(1, 512, size=rows)
    order = rng.permutation(rows)
    monkeypatch.setattr(torch, "randperm", lambda n, generator=None: torch.tensor(order))
    expected = get_length_grouped_indices(lengths.tolist(), batch)
    assert length_grouped(order, lengths, batch).tolist() == expected


def test_batch_order_groups_only_when_asked():
    lengths = np.arange(400)
    plain = BatchOrder(rows=400, micro=2, gas=2, dp=2, seed=1, steps_per_epoch=50)
    grouped = BatchOrder(rows=400, micro=2, gas=2, dp=2, seed=1, steps_per_epoch=50, lengths=lengths)
    assert sorted(grouped.order(0).tolist()) == list(range(400))
    assert grouped.order(0)[0] == 399 and not np.array_equal(plain.order(0), grouped.order(0))
    spread = [np.ptp(lengths[grouped.global_rows(s)]) for s in range(1, 50)]
    # most global batches hold rows of similar length (one may straddle two megabatches)
    assert np.median(spread) < np.ptp(lengths) / 10
