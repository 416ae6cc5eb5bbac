"""Preference examples (rl:) -> the rows the loop trains on, saved like supervised rows (train/, eval/).

`length` counts both sequences' tokens (what a step processes: tokens/s, MFU, group_by_length).
A paired row holds two sequences, chosen and rejected, each the prompt's tokens followed by the answer's,
with the prompt masked (-100) as TRL masks it. A KTO row holds its completion and a KL completion: the
same prompt with another row's completion (the mismatched pair TRL's KTO uses to
estimate the KL term, paired within groups of micro_batch_size as TRL pairs them within a batch). Rows are
never packed; the split and the seeded shuffle are the supervised ones.
"""
from __future__ import annotations

from pathlib import Path

import datasets

from ds_tp.data.packing import eval_count, shuffled
from ds_tp.data.preference import kl_completion_ids, kto_sequence
from ds_tp.data.sources import quiet_datasets
from ds_tp.errors import Problem, UserError
from ds_tp.labels import IGNORE

IDS = datasets.List(datasets.Value("int32"))
PAIR_FEATURES = datasets.Features({"chosen_input_ids": IDS, "chosen_labels": IDS, "rejected_input_ids": IDS,
                                   "rejected_labels": IDS, "length": datasets.Value("int32")})
KTO_FEATURES = datasets.Features({"completion_input_ids": IDS, "completion_labels": IDS, "kl_input_ids": IDS,
                                  "kl_labels": IDS, "label": datasets.Value("bool"), "length": datasets.Value("int32")})


def sequence(prompt: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
    return list(prompt) + list(answer), [IGNORE] * len(prompt) + list(answer)


def pair_row(example: dict) -> dict:
    chosen, chosen_labels = sequence(example["prompt_ids"], example["chosen_ids"])
    rejected, rejected_labels = sequence(example["prompt_ids"], example["rejected_ids"])
    return {"chosen_input_ids": chosen, "chosen_labels": chosen_labels, "rejected_input_ids": rejected,
            "rejected_labels": rejected_labels, "length": len(chosen) + len(rejected)}


def kto_rows(examples: list[dict], micro: int, sequence_len: int) -> list[dict]:
    """KTO rows: each completion and its KL completion (kl_completion_ids: rotated by one within consecutive
    groups of micro_batch_size, as TRL pairs them), each with the example's prompt, cut to sequence_len."""
    kl = kl_completion_ids([e["completion_ids"] for e in examples], micro)
    rows = []
    for example, other in zip(examples, kl):
        ids, mask = kto_sequence(example["prompt_ids"], example["completion_ids"], sequence_len)
        kl_ids, kl_mask = kto_sequence(example["prompt_ids"], other, sequence_len)
        rows.append({"completion_input_ids": ids, "completion_labels": masked(ids, mask), "kl_input_ids": kl_ids,
                     "kl_labels": masked(kl_ids, kl_mask), "label": bool(example["label"]),
                     "length": len(ids) + len(kl_ids)})
    return rows


def masked(ids: list[int], mask: list[int]) -> list[int]:
    return [t if m else IGNORE for t, m in zip(ids, mask)]


def answers(example: dict) -> list[list[int]]:
    return [example[k] for k in ("chosen_ids", "rejected_ids", "completion_ids") if k in example]


def build_preference(cfg: dict, examples: list[dict], where: str, out: Path, dropped_long: int = 0) -> dict:
    """Split, shuffle and save; returns the meta.json fields. The formatters already left out the rows
    Axolotl drops as too long (dropped_long) and cut the rest as TRL does; a row whose answer is empty
    (nothing to learn) is left out and counted here."""
    sequence_len = int(cfg.get("sequence_len") or 512)
    kept = [e for e in examples if all(len(a) for a in answers(e))]
    empty = len(examples) - len(kept)
    if not kept:
        raise UserError(Problem(f"no preference example to train on: {dropped_long} longer than sequence_len "
                                f"{sequence_len}, {empty} with an empty answer", key="datasets", where=where,
                                hint="raise sequence_len"))
    duplicates = 0
    if cfg.get("dataset_exact_deduplication"):  # as Axolotl: identical examples kept once, before the split
        seen: set = set()
        unique = []
        for example in kept:
            key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(example.items()))
            if key not in seen:
                seen.add(key)
                unique.append(example)
        kept, duplicates = unique, len(kept) - len(unique)
    seed = int(cfg.get("seed") if cfg.get("seed") is not None else 42)
    if cfg.get("shuffle_merged_datasets", True):
        kept = shuffled(kept, seed)
    held_out = eval_count(float(cfg.get("val_set_size") or 0), len(kept))
    if held_out >= len(kept):
        raise UserError(Problem(f"{cfg.get('val_set_size')} leaves no training examples out of {len(kept)}",
                                key="val_set_size", hint="a fraction below 1, or a count below the examples"))
    train, evaluation = kept[:len(kept) - held_out], kept[len(kept) - held_out:]
    paired = cfg.get("rl") != "kto"
    counts = {}
    for name, part in (("train", train), ("eval", evaluation)):
        if not part:
            continue
        rows = [pair_row(e) for e in part] if paired else kto_rows(part, int(cfg.get("micro_batch_size") or 1),
                                                                   sequence_len)
        table = datasets.Dataset.from_list(rows, features=PAIR_FEATURES if paired else KTO_FEATURES)
        with quiet_datasets():
            table.save_to_disk(str(out / name))
        counts[name] = len(rows)
    return {"train_rows": counts["train"], "eval_rows": counts.get("eval", 0), "dropped_long": dropped_long,
            "dropped_untrained": empty, "dropped_short": 0, "duplicates_removed": duplicates,
            "examples": {"train": len(train), "eval": len(evaluation)}, "sequence_len": sequence_len,
            "sample_packing": False, "preference": cfg.get("rl")}
