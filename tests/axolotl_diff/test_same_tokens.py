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


def same(entry: dict, cfg: dict, rows: list[dict], kind: str = "chars"):
    """Every case runs on a character-level tokenizer and on two BPE tokenizers, where merges and
    leading spaces decide where a turn's first token starts."""
    tok = tokenizer(kind)
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
