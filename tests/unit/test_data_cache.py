"""The prepared-data cache: hits on identical inputs, misses when any input changes, safe publishing."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ds_tp.assets import build_tokenizer, generate_quickstart_rows
from ds_tp.data import load_prepared, prepare_datasets
from ds_tp.data.cache import is_prepared, publish, read_meta, write_meta


@lru_cache(maxsize=1)
def tokenizer():
    return build_tokenizer(generate_quickstart_rows(50, 0))


def setup(tmp_path: Path) -> tuple[dict, Path]:
    data = tmp_path / "configs" / "data"
    data.mkdir(parents=True)
    path = data / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate_quickstart_rows(30, 3)), encoding="utf-8")
    cfg = {"datasets": [{"path": "data/tasks.jsonl", "type": "alpaca"}], "sequence_len": 128,
           "sample_packing": True, "val_set_size": 0.0, "seed": 42,
           "dataset_prepared_path": str(tmp_path / "prepared")}
    return cfg, path


def snapshot(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_second_call_is_a_hit_and_changes_miss(tmp_path):
    cfg, path = setup(tmp_path)
    config_dir = tmp_path / "configs"  # the relative path is found next to the config, not in cwd
    first = prepare_datasets(cfg, tokenizer(), config_dir=config_dir)
    assert not first.cache_hit and is_prepared(first.path)
    assert first.path.parent == tmp_path / "prepared"
    before = snapshot(tmp_path / "prepared")
    second = prepare_datasets(cfg, tokenizer(), config_dir=config_dir)
    assert second.cache_hit and second.path == first.path and second.train_rows == first.train_rows
    assert snapshot(tmp_path / "prepared") == before  # nothing rebuilt, nothing written

    data = bytearray(path.read_bytes())
    data[data.index(b'"a"') + 1] = ord("b")  # one byte of one row
    path.write_bytes(bytes(data))
    changed_file = prepare_datasets(cfg, tokenizer(), config_dir=config_dir)
    assert not changed_file.cache_hit and changed_file.path != first.path

    longer = prepare_datasets({**cfg, "sequence_len": 256}, tokenizer(), config_dir=config_dir)
    assert not longer.cache_hit and longer.path not in (first.path, changed_file.path)

    meta = read_meta(longer.path)
    assert meta["train_rows"] == longer.train_rows and meta["inputs"]["cfg"]["sequence_len"] == 256
    train, _ = load_prepared(longer.path)
    assert len(train) == longer.train_rows
    leftovers = [p.name for p in (tmp_path / "prepared").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_tokenizer_change_misses(tmp_path):
    cfg, _ = setup(tmp_path)
    first = prepare_datasets(cfg, tokenizer(), config_dir=tmp_path / "configs")
    other = build_tokenizer(generate_quickstart_rows(50, 0))
    other.chat_template = "{{ messages }}"
    second = prepare_datasets(cfg, other, config_dir=tmp_path / "configs")
    assert not second.cache_hit and second.path != first.path


def test_publish_keeps_the_winner(tmp_path):
    final = tmp_path / "key"
    for name in ("mine", "theirs"):
        (tmp_path / name).mkdir()
        write_meta(tmp_path / name, {"who": name})
    assert publish(tmp_path / "theirs", final) is True
    assert publish(tmp_path / "mine", final) is False  # lost the race: theirs stays, ours is gone
    assert read_meta(final) == {"who": "theirs"} and not (tmp_path / "mine").exists()
