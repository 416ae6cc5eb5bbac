"""Prompt formats on a real tokenizer (the quickstart's character-level one)."""
from __future__ import annotations

from functools import lru_cache

import pytest

from ds_tp.assets import build_tokenizer
from ds_tp.data.chat import chat_formatter, resolve_chat_template
from ds_tp.data.formats import formatter_for
from ds_tp.data.prompts import (
    IGNORE,
    BadRow,
    alpaca_formatter,
    alpaca_prompt,
    completion_formatter,
    user_defined_formatter,
)
from ds_tp.errors import UserError


@lru_cache(maxsize=1)
def tokenizer():
    return build_tokenizer([{"instruction": "x", "input": "y", "output": "z"}])


def trained_text(ids, labels) -> str:
    tok = tokenizer()
    return tok.decode([label for label in labels if label != IGNORE])


def test_alpaca_prompt_text_is_axolotls():
    assert alpaca_prompt("Say hi.", "to Bob") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nSay hi.\n\n"
        "### Input:\nto Bob\n\n### Response:\n")
    assert alpaca_prompt("Say hi.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi.\n\n### Response:\n")


def test_alpaca_masks_the_prompt_and_trains_output_plus_eos():
    tok = tokenizer()
    [(ids, labels)] = alpaca_formatter(tok, train_on_inputs=False)(
        {"instruction": "Reverse it.", "input": "abc", "output": "cba"})
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ids.count(tok.bos_token_id) == 1 and ids.count(tok.eos_token_id) == 1
    assert trained_text(ids, labels) == "cba</s>"
    prompt_len = len(tok(alpaca_prompt("Reverse it.", "abc"))["input_ids"])
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert tok.decode(ids) == "<s>" + alpaca_prompt("Reverse it.", "abc") + "cba</s>"


def test_alpaca_train_on_inputs_trains_everything():
    [(ids, labels)] = alpaca_formatter(tokenizer(), train_on_inputs=True)(
        {"instruction": "Go.", "input": None, "output": "ok"})
    assert labels == ids
    assert tokenizer().decode(ids).startswith("<s>Below is an instruction that describes a task. Write")


@pytest.mark.parametrize("row, field, message", [
    ({"instruction": "a"}, "output", "missing"),
    ({"instruction": "a", "output": None}, "output", "missing"),
    ({"instruction": "a", "output": 5}, "output", "expected a string, got int 5"),
    ({"output": "b"}, "instruction", "missing"),
    ({"instruction": "a", "input": ["x"], "output": "b"}, "input", "expected a string"),
])
def test_alpaca_bad_rows(row, field, message):
    with pytest.raises(BadRow) as caught:
        alpaca_formatter(tokenizer(), train_on_inputs=False)(row)
    assert caught.value.field == field and caught.value.message.startswith(message)


def test_user_defined_format():
    spec = {"system_prompt": "SYS ", "field_instruction": "q", "field_input": "ctx", "field_output": "a",
            "format": "Q: {instruction} C: {input} A: ", "no_input_format": "Q: {instruction} A: "}
    fmt = user_defined_formatter(tokenizer(), spec, train_on_inputs=False)
    [(ids, labels)] = fmt({"q": "two", "ctx": "1+1", "a": "2"})
    assert tokenizer().decode(ids) == "<s>SYS Q: two C: 1+1 A: 2</s>"
    assert trained_text(ids, labels) == "2</s>"
    [(ids, _)] = fmt({"q": "two", "a": "2", "system": "OWN "})  # a row's own system column wins
    assert tokenizer().decode(ids) == "<s>OWN Q: two A: 2</s>"


def test_user_defined_defaults_and_bad_placeholder():
    fmt = formatter_for({"type": {}}, 0, {}, tokenizer())
    [(ids, _)] = fmt({"instruction": "hi", "input": "there", "output": "yo"})
    assert tokenizer().decode(ids) == "<s>hi there yo</s>"
    with pytest.raises(UserError) as caught:
        formatter_for({"type": {"format": "{question}"}}, 2, {}, tokenizer())
    assert str(caught.value).startswith("datasets[2].type.format: bad placeholder")


def test_completion_cuts_documents_into_sequence_len_pieces():
    tok = tokenizer()
    fmt = completion_formatter(tok, field="body", sequence_len=8)
    pieces = fmt({"body": "abcdefghijklmnopqrs"})  # BOS + 19 chars + EOS = 21 tokens
    assert [len(ids) for ids, _ in pieces] == [8, 8, 5]
    assert all(ids == labels for ids, labels in pieces)
    joined = [t for ids, _ in pieces for t in ids]
    assert tok.decode(joined) == "<s>abcdefghijklmnopqrs</s>"


def chat_rows():
    return {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                         {"role": "assistant", "content": "ciao"}]}


def test_chat_template_trains_only_assistant_turns():
    tok = tokenizer()
    fmt = formatter_for({"type": "chat_template"}, 0, {}, tok)
    [(ids, labels)] = fmt(chat_rows())
    assert tok.decode(ids) == tok.apply_chat_template(chat_rows()["messages"], tokenize=False)
    spans = contiguous_trained(ids, labels)
    # as Axolotl: the content and the EOS after it, not the template's newline after the EOS
    assert [tok.decode(span) for span in spans] == ["hello</s>", "ciao</s>"]


def test_chat_template_train_on_eos_none_and_other_roles():
    tok = tokenizer()
    fmt = chat_formatter(tok, template=tok.chat_template, field_messages="messages",
                         roles_to_train=["user"], train_on_eos="none")
    [(ids, labels)] = fmt(chat_rows())
    assert [tok.decode(span) for span in contiguous_trained(ids, labels)] == ["hi", "bye"]


def test_chat_template_maps_sharegpt_roles_and_drops_the_system_message():
    tok = tokenizer()
    row = {"c": [{"from": "system", "value": "Be terse."}, {"from": "human", "value": "hi"},
                 {"from": "gpt", "value": "hello"}]}
    entry = {"type": "chat_template", "field_messages": "c", "message_property_mappings": {"role": "from", "content": "value"}}
    [(ids, labels)] = formatter_for(entry, 0, {}, tok)(row)  # default map: gpt is the assistant
    assert [tok.decode(span) for span in contiguous_trained(ids, labels)] == ["hello</s>"]
    plain = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}]
    assert tok.decode(ids) == tok.apply_chat_template(plain, tokenize=False)
    [(ids, labels)] = formatter_for({**entry, "drop_system_message": True, "roles_to_train": ["human"]}, 0, {}, tok)(row)
    assert tok.decode(ids) == tok.apply_chat_template(plain[1:], tokenize=False)
    assert [tok.decode(span) for span in contiguous_trained(ids, labels)] == ["hi</s>"]
    with pytest.raises(UserError, match="datasets\\[0\\].roles"):
        formatter_for({**entry, "roles": {"user": "human"}}, 0, {}, tok)


def test_chat_template_named_and_missing():
    tok = tokenizer()
    assert "<|im_start|>" in resolve_chat_template(tok, "chatml", None, key="chat_template")
    bare = build_tokenizer([])
    bare.chat_template = None
    with pytest.raises(UserError, match="the tokenizer has no chat template"):
        formatter_for({"type": "chat_template"}, 0, {}, bare)
    with pytest.raises(UserError, match="unknown chat template 'nope'"):
        formatter_for({"type": "chat_template"}, 0, {"chat_template": "nope"}, tok)


@pytest.mark.parametrize("row, field", [
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": "hi"}, "messages"),
    ({}, "messages"),
])
def test_chat_template_bad_rows(row, field):
    """Malformed rows are refused (a row with nothing to train is not malformed: it is dropped later)."""
    with pytest.raises(BadRow) as caught:
        formatter_for({"type": "chat_template"}, 0, {}, tokenizer())(row)
    assert caught.value.field == field


def test_unknown_type_names_the_key_and_valid_types():
    with pytest.raises(UserError) as caught:
        formatter_for({"type": "alpacca"}, 1, {}, tokenizer())
    text = str(caught.value)
    assert "\n" not in text and text.startswith("datasets[1].type: unknown dataset type 'alpacca'")
    assert "alpaca, completion, chat_template" in text


def contiguous_trained(ids, labels):
    spans, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


def chatml_tokenizer():
    tok = build_tokenizer([{"instruction": "x", "input": "y", "output": "z"}])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


@pytest.mark.parametrize("options, cfg, expected", [
    ({}, {"eot_tokens": ["<|im_end|>"]}, ["hello<|im_end|>", "ciao<|im_end|>"]),
    ({"train_on_eot": "last"}, {"eot_tokens": ["<|im_end|>"]}, ["hello", "ciao<|im_end|>"]),
    ({"train_on_eot": "none"}, {"eot_tokens": ["<|im_end|>"]}, ["hello", "ciao"]),
    ({}, {}, ["hello", "ciao"]),  # eot_tokens unset: the eos_token, which chatml never writes
    ({}, {"eot_tokens": ["<|im_end|>"], "train_on_inputs": True},
     ["Be terse.<|im_end|>", "hi<|im_end|>", "hello<|im_end|>", "bye<|im_end|>", "ciao<|im_end|>"]),
])
def test_chat_template_eot_tokens_end_turns_as_axolotl(options, cfg, expected):
    tok = chatml_tokenizer()
    fmt = formatter_for({"type": "chat_template", "chat_template": "chatml", **options}, 0, cfg, tok)
    [(ids, labels)] = fmt(chat_rows())
    assert [tok.decode(span) for span in contiguous_trained(ids, labels)] == expected


def test_eot_tokens_problems(capsys):
    tok = chatml_tokenizer()
    with pytest.raises(UserError, match="'<eot>' encodes to 5 tokens"):
        formatter_for({"type": "chat_template", "chat_template": "{{ '<eot>' }}"}, 0, {"eot_tokens": ["<eot>"]}, tok)
    with pytest.raises(UserError, match="train_on_eot \\(last\\) must equal train_on_eos \\(turn\\)"):
        formatter_for({"type": "chat_template", "train_on_eot": "last",
                       "chat_template": "{% for m in messages %}{{ m['content'] + '<|im_end|></s>' }}{% endfor %}"},
                      0, {"eot_tokens": ["</s>", "<|im_end|>"]}, tok)
    formatter_for({"type": "chat_template", "chat_template": "chatml"}, 0, {"eot_tokens": ["<|im_end|>", "</s>"]}, tok)
    assert "eot_tokens: '</s>' is not in the chat template; ignored (as Axolotl)" in capsys.readouterr().err
