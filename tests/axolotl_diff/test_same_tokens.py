"""Same input_ids and labels as Axolotl 0.21.0 for every dataset type and option ds-tp implements."""
from __future__ import annotations

from functools import lru_cache

import pytest

from ds_tp.assets import build_tokenizer
from ds_tp.data.chat import CHATML
from tests.axolotl_diff.harness import axolotl_examples, bpe_tokenizer, ds_tp_examples, shown

TOKENIZERS = ("chars", "metaspace", "bytelevel")


@lru_cache(maxsize=None)
def tokenizer(kind: str = "chars"):
    if kind != "chars":
        return bpe_tokenizer(kind)
    tok = build_tokenizer([{"instruction": "x", "input": "y", "output": "z"}])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


@pytest.fixture(params=TOKENIZERS)
def tok_kind(request):
    return request.param


@lru_cache(maxsize=None)
def tokenizer_with(kind: str, specials: tuple[str, ...]):
    """A fresh tokenizer of `kind` with a template family's special tokens as single tokens."""
    tok = bpe_tokenizer(kind) if kind != "chars" else build_tokenizer([{"instruction": "x", "input": "y", "output": "z"}])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *specials]})
    return tok


def same(entry: dict, cfg: dict, rows: list[dict], kind: str = "chars", tok=None):
    """Every case runs on a character-level tokenizer and on two BPE tokenizers, where merges and
    leading spaces decide where a turn's first token starts."""
    tok = tok or tokenizer(kind)
    ours = ds_tp_examples(entry, cfg, tok, rows)
    theirs = axolotl_examples(entry, cfg, tok, rows)
    assert [shown(tok, *x) for x in ours] == [shown(tok, *x) for x in theirs]
    assert ours == theirs


ALPACA_ROWS = [
    {"instruction": "Reverse it.", "input": "abc", "output": "cba"},
    {"instruction": "Say hi.", "input": "", "output": "hi"},
    {"instruction": "Nothing to say.", "input": "x", "output": ""},
    {"instruction": "  Spaced  ", "input": " in ", "output": " out "},
]


@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_alpaca(train_on_inputs, tok_kind):
    same({"type": "alpaca"}, {"train_on_inputs": train_on_inputs}, ALPACA_ROWS, tok_kind)


CHAT_ROW = {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                         {"role": "assistant", "content": "ciao"}]}


@pytest.mark.parametrize("options, cfg", [
    ({}, {"eot_tokens": ["<|im_end|>"]}),
    ({"train_on_eot": "last"}, {"eot_tokens": ["<|im_end|>"]}),
    ({"train_on_eot": "none"}, {"eot_tokens": ["<|im_end|>"]}),
    ({}, {}),
    ({}, {"eot_tokens": ["<|im_end|>"], "train_on_inputs": True}),
    ({"train_on_eos": "all"}, {"eot_tokens": ["<|im_end|>"]}),
    ({"roles_to_train": ["user"]}, {"eot_tokens": ["<|im_end|>"]}),
    ({"roles_to_train": ["assistant", "system"]}, {"eot_tokens": ["<|im_end|>"]}),
], ids=lambda v: str(v))
def test_chat_template_chatml(options, cfg, tok_kind):
    entry = {"type": "chat_template", **options}
    same(entry, {"chat_template": "jinja", "chat_template_jinja": CHATML, **cfg}, [CHAT_ROW], tok_kind)


@pytest.mark.parametrize("train_on_eos", ["turn", "all", "last", "none"])
def test_chat_template_tokenizer_default(train_on_eos, tok_kind):
    same({"type": "chat_template", "train_on_eos": train_on_eos}, {}, [CHAT_ROW], tok_kind)


def test_chat_template_property_mappings(tok_kind):
    row = {"conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"}]}
    entry = {"type": "chat_template", "field_messages": "conversations",
             "message_property_mappings": {"role": "from", "content": "value"}}
    same(entry, {}, [row], tok_kind)


SHAREGPT_ROW = {"conversations": [{"from": "system", "value": "Be terse."}, {"from": "human", "value": "hi"},
                                  {"from": "gpt", "value": "hello"}, {"from": "human", "value": "bye"},
                                  {"from": "gpt", "value": "ciao"}]}


@pytest.mark.parametrize("options", [
    {},  # Axolotl's default role map: human -> user, gpt -> assistant
    {"roles_to_train": ["gpt"]},  # roles_to_train names are mapped too
    {"roles": {"user": ["human"], "assistant": ["gpt"]}},
    {"roles": {"user": ["human", "system"], "assistant": ["gpt"]}, "roles_to_train": ["user"]},
    {"roles": {"assistant": ["gpt"]}},  # human is in no list: it passes as written
    {"drop_system_message": True},
    {"drop_system_message": True, "roles": {"user": ["human"], "assistant": ["gpt"]}},
], ids=lambda v: str(v))
def test_chat_template_roles(options, tok_kind):
    entry = {"type": "chat_template", "field_messages": "conversations",
             "message_property_mappings": {"role": "from", "content": "value"}, **options}
    same(entry, {"chat_template": "jinja", "chat_template_jinja": CHATML, "eot_tokens": ["<|im_end|>"]},
         [SHAREGPT_ROW], tok_kind)


def test_completion_short_and_long(tok_kind):
    rows = [{"text": "abc"}, {"text": "abcdefghijklmnopqrstuvwxyz" * 3}]
    same({"type": "completion"}, {"sequence_len": 16}, rows, tok_kind)


USER_DEFINED = {"field_instruction": "q", "field_input": "ctx", "field_output": "a",
                "format": "Q: {instruction}\nC: {input}\nA: ", "no_input_format": "Q: {instruction}\nA: "}
USER_ROWS = [{"q": "What?", "ctx": "this", "a": "that"}, {"q": "Why?", "ctx": "", "a": "because"}]


@pytest.mark.parametrize("extra", [{}, {"system_prompt": "You help.", "system_format": "S: {system}\n"}],
                         ids=["plain", "system"])
@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_user_defined(extra, train_on_inputs, tok_kind):
    same({"type": {**USER_DEFINED, **extra}}, {"train_on_inputs": train_on_inputs}, USER_ROWS, tok_kind)


def test_chat_template_whitespace_and_empty_turns(tok_kind):
    row = {"messages": [{"role": "user", "content": "  hi there \n"}, {"role": "assistant", "content": " hello  "},
                        {"role": "user", "content": "\n"}, {"role": "assistant", "content": "\tciao\n"}]}
    same({"type": "chat_template"}, {"eot_tokens": ["<|im_end|>"], "chat_template": "chatml"}, [row], tok_kind)
    same({"type": "chat_template"}, {}, [row], tok_kind)


def test_chat_template_named_chatml(tok_kind):
    same({"type": "chat_template"}, {"chat_template": "chatml", "eot_tokens": ["<|im_end|>"]}, [CHAT_ROW], tok_kind)


def test_alpaca_cut_at_sequence_len(tok_kind):
    rows = [{"instruction": "Spell it out: " + "x" * 40, "input": "", "output": "y" * 40}]
    same({"type": "alpaca"}, {"sequence_len": 32}, rows, tok_kind)


NAMED = {"llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
         "gemma": ["<start_of_turn>", "<end_of_turn>"], "gemma3": ["<start_of_turn>", "<end_of_turn>"],
         "phi_3": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
         "qwen_25": ["<|im_start|>", "<|im_end|>"], "chatml": ["<|im_start|>", "<|im_end|>"]}


@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("train_on_eot", ["turn", "last"])
def test_named_templates(name, train_on_eot, tok_kind):
    """Each template ds-tp knows by name renders and masks as Axolotl's template of that name, with the
    family's end-of-turn token as eot_tokens (its specials added to the tokenizer as single tokens)."""
    tok = tokenizer_with(tok_kind, tuple(NAMED[name]))
    rows = [CHAT_ROW, {"messages": [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "hello"}]}]
    if name == "gemma":  # Gemma's template refuses a system turn
        rows = [{"messages": [m for m in CHAT_ROW["messages"] if m["role"] != "system"]}, rows[1]]
    same({"type": "chat_template", "train_on_eot": train_on_eot},
         {"chat_template": name, "eot_tokens": [NAMED[name][-1]]}, rows, tok_kind, tok)


@pytest.mark.parametrize("options, cfg", [({}, {"train_on_inputs": True}), ({"roles_to_train": ["system", "assistant"]}, {}),
                                          ({"train_on_eos": "all"}, {})], ids=lambda v: str(v))
def test_gemma3_system_turn_inside_the_first_user_turn(options, cfg, tok_kind):
    """Gemma 3 shows the system content at the start of the first user turn: trained where Axolotl
    trains it, the user content after it found after it."""
    tok = tokenizer_with(tok_kind, tuple(NAMED["gemma3"]))
    same({"type": "chat_template", **options}, {"chat_template": "gemma3", "eot_tokens": ["<end_of_turn>"], **cfg},
         [CHAT_ROW], tok_kind, tok)


DATASETS = {
    "alpaca": ALPACA_ROWS + [{"instruction": "Long " * 20, "input": "", "output": "y"},
                             {"instruction": "", "input": "", "output": "z"}],
    "chat_template": [CHAT_ROW, {"messages": [{"role": "user", "content": "nothing to answer"}]},
                      {"messages": [{"role": "user", "content": "x y " * 100}, {"role": "assistant", "content": "y"}]}],
}


@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_the_dataset_after_axolotls_filters(tmp_path, kind, tok_kind):
    """Whole preparation, no packing: the rows ds-tp keeps are the rows Axolotl keeps after its filters
    (longer than sequence_len, shorter than min_sample_len, no trainable token; order aside, as the two
    shuffle with different generators)."""
    import json

    from axolotl.utils.data.utils import handle_long_seq_in_dataset
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.trainer import process_datasets_for_packing

    from ds_tp.data import load_prepared, prepare_datasets
    from tests.axolotl_diff.harness import axolotl_dataset

    rows, length = DATASETS[kind], 64 if kind == "alpaca" else 160
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"datasets": [{"path": "rows.jsonl", "type": kind}], "sequence_len": length, "min_sample_len": 2,
           "dataset_prepared_path": str(tmp_path / "prepared")}
    tok = tokenizer(tok_kind)
    prepared = prepare_datasets(cfg, tok, config_dir=tmp_path)
    train, _ = load_prepared(prepared.path)
    ours = sorted((list(r["input_ids"]), list(r["labels"])) for r in train)
    acfg = DictDefault({"sequence_len": length, "dataset_num_proc": 1, "min_sample_len": 2})
    theirs_ds = axolotl_dataset({"type": kind}, dict(acfg), tok, rows)
    theirs_ds = handle_long_seq_in_dataset(theirs_ds, length, acfg)
    theirs_ds, _ = process_datasets_for_packing(acfg, theirs_ds, None)
    theirs = sorted((list(r["input_ids"]), list(r["labels"])) for r in theirs_ds)
    assert 0 < len(theirs) < len(rows)  # the filters did drop rows, and kept some
    assert ours == theirs


def test_packed_rows_hold_axolotls_examples_and_positions(tmp_path, tok_kind):
    """sample_packing: every packed row is Axolotl's collator output for the examples packed in it
    (input_ids, labels, position_ids restarting at each example, and the segment of every token).
    Which examples share a row is not compared (ds-tp packs first-fit at preparation, Axolotl's
    multipack packs per batch), nor the padding (ds-tp continues the last example's positions so
    padding is no new document; Axolotl starts them at 0; both mask it out of the loss)."""
    import json

    import numpy as np
    from axolotl.utils.collators.batching import V2BatchSamplerDataCollatorForSeq2Seq
    from axolotl.utils.trainer import add_position_ids

    from ds_tp.data import load_prepared, prepare_datasets
    from tests.axolotl_diff.harness import axolotl_dataset

    rows = [{"instruction": f"Spell {w}.", "input": "", "output": " ".join(w)}
            for w in ("cat", "horse", "mouse", "dog", "elephant", "ox", "zebra", "bee")]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"datasets": [{"path": "rows.jsonl", "type": "alpaca"}], "sequence_len": 512, "sample_packing": True,
           "dataset_prepared_path": str(tmp_path / "prepared")}
    tok = tokenizer(tok_kind)
    train, _ = load_prepared(prepare_datasets(cfg, tok, config_dir=tmp_path).path)
    theirs = axolotl_dataset({"type": "alpaca"}, {"sequence_len": 512}, tok, rows).map(add_position_ids, batched=True)
    by_ids = {tuple(r["input_ids"]): r for r in theirs}
    collate = V2BatchSamplerDataCollatorForSeq2Seq(tokenizer=tok, padding=False, return_tensors="np")
    packed = 0
    for row in train:
        n = row["length"]
        positions = list(row["position_ids"][:n])
        starts = [i for i, p in enumerate(positions) if p == 0] + [n]
        members = [by_ids[tuple(row["input_ids"][a:b])] for a, b in zip(starts, starts[1:])]
        packed += len(members) > 1
        out = collate([[{k: list(m[k]) for k in ("input_ids", "labels", "attention_mask", "position_ids")}
                         for m in members]])
        assert out["input_ids"][0].tolist() == list(row["input_ids"][:n])
        assert out["labels"][0].tolist() == list(row["labels"][:n])
        assert out["position_ids"][0].tolist() == positions
        segment = np.cumsum([p == 0 for p in positions]).tolist()  # Axolotl's attention_mask numbers segments
        assert out["attention_mask"][0].tolist() == segment
    assert packed and sum(1 for _ in train) < len(rows)  # rows really were packed together
