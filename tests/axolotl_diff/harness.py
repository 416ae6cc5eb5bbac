"""Run one dataset entry through Axolotl's own dataset wrapper and through ds-tp's formatter."""
from __future__ import annotations

from ds_tp.data.formats import formatter_for


def axolotl_examples(entry: dict, cfg: dict, tokenizer, rows: list[dict]) -> list[tuple[list, list]]:
    from axolotl.utils.data.wrappers import get_dataset_wrapper
    from axolotl.utils.dict import DictDefault
    from datasets import Dataset

    kind = entry["type"]
    base, style = (kind.split(":", 1) + [None])[:2] if isinstance(kind, str) else (None, None)
    config = DictDefault({"sequence_len": 512, "dataset_num_proc": 1, "train_on_inputs": False, **cfg})
    dataset_config = DictDefault({"path": "rows.jsonl", **entry})
    wrapped, _ = get_dataset_wrapper(dataset_config, tokenizer, config, base, Dataset.from_list(rows), style)
    return [(list(r["input_ids"]), list(r["labels"])) for r in wrapped]


def ds_tp_examples(entry: dict, cfg: dict, tokenizer, rows: list[dict]) -> list[tuple[list, list]]:
    format_row = formatter_for(entry, 0, {"sequence_len": 512, **cfg}, tokenizer)
    return [(list(ids), list(labels)) for row in rows for ids, labels in format_row(row)]


def shown(tokenizer, ids, labels) -> str:
    """A row as text with its untrained tokens in brackets, for a readable assertion diff."""
    return "".join(tokenizer.decode([t]) if label != -100 else f"[{tokenizer.decode([t])}]"
                   for t, label in zip(ids, labels))
