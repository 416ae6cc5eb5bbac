"""Examples -> training rows: pack whole examples into rows (sample_packing) or keep one per row,
pad when asked, and give every row position_ids that restart at each document."""
from __future__ import annotations

import math
import random

from ds_tp.data.prompts import IGNORE, Example

OPEN_ROWS_SCANNED = 64  # first-fit looks at this many not-yet-full rows; older ones are closed


def pack_examples(examples: list[Example], sequence_len: int) -> list[list[Example]]:
    """Greedy first-fit in the given order (callers shuffle first): each example goes into the first
    open row it fits in, else starts a new row. An example is never split across rows, so every
    example must already be at most sequence_len long. Only the newest OPEN_ROWS_SCANNED rows stay
    open, which keeps this linear on big datasets and costs little packing density."""
    rows: list[list[Example]] = []
    room: list[int] = []  # free tokens of rows[first_open:]
    first_open = 0
    for example in examples:
        size = len(example[0])
        for offset, free in enumerate(room):
            if size <= free:
                rows[first_open + offset].append(example)
                room[offset] -= size
                break
        else:
            rows.append([example])
            room.append(sequence_len - size)
            if len(room) > OPEN_ROWS_SCANNED:
                room.pop(0)
                first_open += 1
    return rows


def build_rows(examples: list[Example], *, sequence_len: int, sample_packing: bool, pad_to_sequence_len: bool,
               pad_id: int) -> dict[str, list[list[int]]]:
    """Columns input_ids, labels, position_ids (lists of int) and length (real tokens per row)."""
    groups = pack_examples(examples, sequence_len) if sample_packing else [[example] for example in examples]
    pad = sample_packing or pad_to_sequence_len
    columns: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for group in groups:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for ids, example_labels in group:
            input_ids += ids
            labels += example_labels
            position_ids += range(len(ids))  # restart at 0: a new document starts here
        length = len(input_ids)
        if pad and length < sequence_len:
            missing = sequence_len - length
            input_ids += [pad_id] * missing
            labels += [IGNORE] * missing
            # Padding continues the last document's positions instead of starting a new document:
            # position_ids stay increasing to the end of the row, so code that finds documents from
            # position_ids sees no extra (empty) document, and causal attention keeps the real
            # tokens from ever seeing the padding after them. The labels mask its loss.
            last = position_ids[-1] + 1 if position_ids else 0
            position_ids += range(last, last + missing)
        columns["input_ids"].append(input_ids)
        columns["labels"].append(labels)
        columns["position_ids"].append(position_ids)
        columns["length"].append(length)
    return columns


def shuffled(examples: list[Example], seed: int) -> list[Example]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order]


def eval_count(val_set_size: float, total: int) -> int:
    """Axolotl's val_set_size: a fraction of the examples below 1, a count from 1 up (0 = no eval).
    A fraction rounds up, like datasets' train_test_split."""
    if not val_set_size:
        return 0
    if val_set_size < 1:
        return math.ceil(val_set_size * total)
    return int(val_set_size)
