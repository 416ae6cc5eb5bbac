"""Packing, padding, position_ids and the eval split, through prepare_datasets on real files."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ds_tp.assets import build_tokenizer, generate_quickstart_rows
from ds_tp.data import IGNORE, load_prepared, prepare_datasets
from ds_tp.data.packing import build_rows, pack_examples


@lru_cache(maxsize=1)
def tokenizer():
    return build_tokenizer(generate_quickstart_rows(50, 0))


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def config(tmp_path: Path, **overrides) -> dict:
    cfg = {"datasets": [{"path": "tasks.jsonl", "type": "alpaca"}], "sequence_len": 128, "sample_packing": False,
           "pad_to_sequence_len": False, "train_on_inputs": False, "val_set_size": 0.0, "seed": 42,
           "dataset_prepared_path": str(tmp_path / "prepared"), "shuffle_merged_datasets": True}
    return {**cfg, **overrides}


def documents(row: dict) -> list[list[int]]:
    """Split a packed row into its documents at every position_ids reset (padding excluded)."""
    docs: list[list[int]] = []
    for token, position, _ in zip(row["input_ids"], row["position_ids"], range(row["length"])):
        if position == 0:
            docs.append([])
        docs[-1].append(token)
    return docs


def test_packing_keeps_examples_whole_and_restarts_positions(tmp_path):
    rows = generate_quickstart_rows(120, 7)
    write_rows(tmp_path / "tasks.jsonl", rows)
    prepared = prepare_datasets(config(tmp_path, sample_packing=True, sequence_len=96), tokenizer(),
                                config_dir=tmp_path)
    train, evaluation = load_prepared(prepared.path)
    assert evaluation is None and prepared.train_rows == len(train) < len(rows)
    tok = tokenizer()
    seen = []
    for row in train:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == 96
        positions = row["position_ids"]
        assert all(b == a + 1 or b == 0 for a, b in zip(positions, positions[1:]))
        last = positions[row["length"] - 1]  # padding continues the last document's positions
        assert positions[row["length"]:] == list(range(last + 1, last + 1 + 96 - row["length"]))
        assert set(row["input_ids"][row["length"]:]) <= {tok.pad_token_id}
        assert set(row["labels"][row["length"]:]) <= {IGNORE}
        for doc in documents(row):  # every document is one whole example: BOS ... EOS
            assert doc[0] == tok.bos_token_id and doc[-1] == tok.eos_token_id
            assert doc.count(tok.bos_token_id) == 1
            seen.append(tok.decode(doc))
    assert sorted(seen) == sorted(f"<s>{alpaca_text(row)}</s>" for row in rows)


def alpaca_text(row: dict) -> str:
    from ds_tp.data import alpaca_prompt
    return alpaca_prompt(row["instruction"], row["input"]) + row["output"]


def test_without_packing_one_example_per_row_and_optional_padding(tmp_path):
    write_rows(tmp_path / "tasks.jsonl", generate_quickstart_rows(20, 1))
    plain = prepare_datasets(config(tmp_path), tokenizer(), config_dir=tmp_path)
    train, _ = load_prepared(plain.path)
    assert plain.train_rows == 20
    for row in train:
        assert row["position_ids"] == list(range(len(row["input_ids"]))) and row["length"] == len(row["input_ids"])
    padded = prepare_datasets(config(tmp_path, pad_to_sequence_len=True, sequence_len=64), tokenizer(),
                              config_dir=tmp_path)
    train, _ = load_prepared(padded.path)
    for row in train:
        assert len(row["input_ids"]) == 64 and row["position_ids"] == list(range(64))
        assert row["labels"][row["length"]:] == [IGNORE] * (64 - row["length"])


def test_first_fit_packing_unit():
    examples = [([1] * size, [1] * size) for size in (5, 4, 3, 2, 6, 1)]
    groups = pack_examples(examples, 8)
    assert [[len(ids) for ids, _ in group] for group in groups] == [[5, 3], [4, 2, 1], [6]]
    columns = build_rows(examples[:2], sequence_len=8, sample_packing=True, pad_to_sequence_len=False, pad_id=0)
    assert columns["position_ids"] == [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7]]
    assert columns["length"] == [5, 4]


def test_val_split_is_deterministic_and_disjoint(tmp_path):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(50)]
    write_rows(tmp_path / "tasks.jsonl", rows)
    cfg = config(tmp_path, val_set_size=0.1)
    first = prepare_datasets(cfg, tokenizer(), config_dir=tmp_path)
    assert (first.train_rows, first.eval_rows) == (45, 5)
    train, evaluation = load_prepared(first.path)
    again = prepare_datasets({**cfg, "dataset_prepared_path": str(tmp_path / "other")}, tokenizer(),
                             config_dir=tmp_path)
    train2, evaluation2 = load_prepared(again.path)
    assert evaluation["input_ids"] == evaluation2["input_ids"] and train["input_ids"] == train2["input_ids"]
    texts = {tuple(ids) for ids in train["input_ids"]}
    assert not texts & {tuple(ids) for ids in evaluation["input_ids"]}
    other_seed = prepare_datasets({**cfg, "seed": 7}, tokenizer(), config_dir=tmp_path)
    assert load_prepared(other_seed.path)[1]["input_ids"] != evaluation["input_ids"]
