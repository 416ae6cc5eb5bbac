"""Bad user data: every case is one UserError line naming the file and the row/line/field."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from ds_tp.assets import build_tokenizer
from ds_tp.data import prepare_datasets
from ds_tp.errors import UserError


@lru_cache(maxsize=1)
def tokenizer():
    return build_tokenizer([])


GOOD = {"instruction": "Say hi.", "input": "", "output": "hi"}


def prepare(tmp_path: Path, name: str, content: bytes | str, **entry) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    cfg = {"datasets": [{"path": name, "type": "alpaca", **entry}], "sequence_len": 256,
           "dataset_prepared_path": str(tmp_path / "prepared")}
    with pytest.raises(UserError) as caught:
        prepare_datasets(cfg, tokenizer(), config_dir=tmp_path)
    text = str(caught.value)
    assert "\n" not in text, text
    return text


def jsonl(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def test_missing_field_names_file_row_and_field(tmp_path):
    text = prepare(tmp_path, "d.jsonl", jsonl(GOOD, GOOD, {"instruction": "x"}))
    assert text == f"{tmp_path / 'd.jsonl'}: row 3: field 'output': missing"


def test_non_string_field_and_count_of_other_bad_rows(tmp_path):
    text = prepare(tmp_path, "d.jsonl", jsonl(GOOD, {**GOOD, "output": 5}, {**GOOD, "output": [1]}))
    assert text.startswith(f"{tmp_path / 'd.jsonl'}: row 2: field 'output': expected a string, got int 5")
    assert text.endswith("(1 more bad rows)")


def test_empty_file(tmp_path):
    assert prepare(tmp_path, "d.jsonl", "") == f"{tmp_path / 'd.jsonl'}: the file is empty"
    assert prepare(tmp_path, "e.jsonl", "\n  \n").endswith("e.jsonl: the file is empty")


def test_non_utf8_file(tmp_path):
    text = prepare(tmp_path, "d.jsonl", jsonl(GOOD).encode() + b'{"instruction": "caf\xe9", "output": "x"}\n')
    assert text.startswith(f"{tmp_path / 'd.jsonl'}: line 2: not UTF-8 text (byte 0xe9")


def test_malformed_json_lines(tmp_path):
    text = prepare(tmp_path, "d.jsonl", jsonl(GOOD, GOOD, '{"instruction": "x", "output": '))
    assert text.startswith(f"{tmp_path / 'd.jsonl'}: line 3: malformed JSON")


def test_malformed_json_document(tmp_path):
    text = prepare(tmp_path, "d.json", '[\n  {"instruction": "x", "output": "y"},\n  {"instruction": }\n]\n')
    assert text.startswith(f"{tmp_path / 'd.json'}: line 3: malformed JSON")


def test_missing_file_names_the_entry(tmp_path):
    cfg = {"datasets": [{"path": "x.jsonl", "type": "alpaca"}], "dataset_prepared_path": str(tmp_path / "p")}
    with pytest.raises(UserError) as caught:
        prepare_datasets(cfg, tokenizer(), config_dir=tmp_path)
    assert str(caught.value).startswith("datasets[0].path: no such file or folder 'x.jsonl'")
    assert "\n" not in str(caught.value)


def test_unknown_type(tmp_path):
    text = prepare(tmp_path, "d.jsonl", jsonl(GOOD), type="alpacca")
    assert text.startswith("datasets[0].type: unknown dataset type 'alpacca'")


def test_every_row_too_long(tmp_path):
    cfg = {"datasets": [{"path": "d.jsonl", "type": "alpaca"}], "sequence_len": 8,
           "dataset_prepared_path": str(tmp_path / "prepared")}
    (tmp_path / "d.jsonl").write_text(jsonl(GOOD, GOOD), encoding="utf-8")
    with pytest.raises(UserError) as caught:
        prepare_datasets(cfg, tokenizer(), config_dir=tmp_path)
    text = str(caught.value)
    assert text.startswith(str(tmp_path / "d.jsonl")) and "sequence_len: every example is longer than " \
        "sequence_len 8 tokens (the shortest has 11)" in text  # 8 + 3: as Axolotl, each half is cut at 8
    assert "\n" not in str(caught.value)


def test_some_rows_too_long_are_dropped_and_counted(tmp_path):
    long_row = {**GOOD, "output": "x" * 300}
    (tmp_path / "d.jsonl").write_text(jsonl(GOOD, long_row, GOOD), encoding="utf-8")
    cfg = {"datasets": [{"path": "d.jsonl", "type": "alpaca"}], "sequence_len": 256,
           "dataset_prepared_path": str(tmp_path / "prepared")}
    prepared = prepare_datasets(cfg, tokenizer(), config_dir=tmp_path)
    assert (prepared.train_rows, prepared.dropped_long) == (2, 1)


def test_chat_row_without_trainable_turn_is_dropped_and_counted(tmp_path):
    """As Axolotl: a conversation with nothing to learn is dropped (and counted), not an error."""
    rows = jsonl({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                 {"messages": [{"role": "user", "content": "alone"}]})
    (tmp_path / "c.jsonl").write_text(rows, encoding="utf-8")
    cfg = {"datasets": [{"path": "c.jsonl", "type": "chat_template"}], "sequence_len": 256,
           "dataset_prepared_path": str(tmp_path / "prepared")}
    prepared = prepare_datasets(cfg, tokenizer(), config_dir=tmp_path)
    assert (prepared.train_rows, prepared.dropped_untrained) == (1, 1)
    rows = jsonl({"messages": [{"role": "user", "content": "alone"}]})
    text = prepare(tmp_path, "d.jsonl", rows, type="chat_template")
    assert "every example has all its labels masked" in text


def test_csv_and_folder_sources_load(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.csv").write_text("instruction,input,output\nSay hi.,,hi\nSay yo.,,yo\n", encoding="utf-8")
    (folder / "b.jsonl").write_text(jsonl(GOOD), encoding="utf-8")
    cfg = {"datasets": [{"path": "parts", "type": "alpaca"}], "sequence_len": 256,
           "dataset_prepared_path": str(tmp_path / "prepared")}
    assert prepare_datasets(cfg, tokenizer(), config_dir=tmp_path).train_rows == 3


def test_dataset_error_at_a_config_key_names_the_yaml_line(tmp_path):
    """A dataset problem found at a config key (a path that does not exist) points at that key's line."""
    from click.testing import CliRunner

    from ds_tp.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("base_model: builtin:tiny-llama\ndatasets:\n  - path: nowhere.jsonl\n    type: alpaca\n"
                   f"output_dir: {tmp_path / 'o'}\n")
    result = CliRunner().invoke(main, ["preprocess", str(cfg)])
    errors = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert errors[0].startswith(f"error: {cfg}:3:5: datasets[0].path: no such file"), errors
