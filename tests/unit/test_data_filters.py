"""Axolotl's example filters: min_sample_len (default 2) and dataset_exact_deduplication."""
import json

from ds_tp.data import load_prepared, prepare_datasets
from ds_tp.data.prepare import deduplicate, drop_short
from tests.unit.test_data_errors import tokenizer


def test_drop_short_and_deduplicate():
    examples = [([1], [1]), ([1, 2], [-100, 2]), ([1, 2], [-100, 2]), ([1, 2], [1, 2]), ([3, 4, 5], [3, 4, 5])]
    kept, dropped = drop_short(examples, 2)
    assert dropped == 1 and kept == examples[1:]
    once, removed = deduplicate(kept)
    assert removed == 1 and once == [([1, 2], [-100, 2]), ([1, 2], [1, 2]), ([3, 4, 5], [3, 4, 5])]


def _prepare(tmp_path, rows, **cfg):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"datasets": [{"path": "d.jsonl", "type": "alpaca"}], "sequence_len": 256,
            "dataset_prepared_path": str(tmp_path / "prepared")}
    return prepare_datasets({**base, **cfg}, tokenizer(), config_dir=tmp_path)


def test_exact_deduplication_through_preparation(tmp_path):
    rows = [{"instruction": "a", "output": "b"}] * 3 + [{"instruction": "c", "output": "d"}]
    assert _prepare(tmp_path / "plain", rows).train_rows == 4
    prepared = _prepare(tmp_path / "dedup", rows, dataset_exact_deduplication=True)
    assert prepared.train_rows == 2
    train, _ = load_prepared(prepared.path)
    assert len({tuple(x) for x in train["input_ids"]}) == 2


def test_min_sample_len_drops_short_examples(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "a much longer instruction here", "output": "ok"}]
    assert _prepare(tmp_path / "all", rows).train_rows == 2
    train, _ = load_prepared(_prepare(tmp_path / "min", rows, min_sample_len=25).path)
    assert len(train) == 1 and len(train["input_ids"][0]) >= 25
