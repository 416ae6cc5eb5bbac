"""Preference data (rl:) without Axolotl: bad rows name their field, config mistakes name their key, where
prompt and completions meet, KTO's labels and KL pairs, and the refusals validate shows for rl types."""
from __future__ import annotations

from functools import lru_cache

import pytest
from ds_tp.translators.dataset_types import resolve_dataset_type, resolve_preference_type

from ds_tp.data.preference import (
    kl_completion_ids,
    kto_sequence,
    preference_formatter,
    tokenize_cpo,
    tokenize_dpo,
)
from ds_tp.data.preference_text import preference_texts
from ds_tp.data.prompts import BadRow
from ds_tp.errors import UserError
from tests.axolotl_diff.harness import bpe_tokenizer


@lru_cache(maxsize=1)
def tok():
    tokenizer = bpe_tokenizer("bytelevel")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|eot_id|>"]})
    return tokenizer


def bad_field(entry: dict, row: dict, rl: str = "dpo", **cfg) -> tuple[str, str]:
    with pytest.raises(BadRow) as caught:
        preference_formatter(entry, 0, {"rl": rl, "chat_template": "chatml", **cfg}, tok())(row)
    return caught.value.field, caught.value.message


def config_error(entry: dict, rl: str = "dpo", **cfg) -> list[str]:
    with pytest.raises(UserError) as caught:
        preference_formatter(entry, 0, {"rl": rl, **cfg}, tok())
    return [f"{p.key}: {p.message}" for p in caught.value.problems]


INTEL = {"system": None, "question": "What is 2+2?", "chosen": "4", "rejected": "5"}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "chosen": {"role": "assistant", "content": "hello"},
        "rejected": {"role": "assistant", "content": "bye"}}
ORPO = {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bye"}]}


@pytest.mark.parametrize("entry, row, rl, field, message", [
    ({"type": "chatml.intel"}, {**INTEL, "question": None}, "dpo", "question", "missing"),
    ({"type": "chatml.intel"}, {**INTEL, "chosen": 4}, "dpo", "chosen", "expected a string, got int"),
    ({"type": "chatml.intel"}, {**INTEL, "system": ["x"]}, "dpo", "system", "expected a string"),
    ({"type": "llama3.ultra"}, {"prompt": "hi", "chosen": [{"role": "user", "content": "hi"}], "rejected": []},
     "dpo", "chosen", "expected at least 2 messages"),
    ({"type": "passthrough"}, {"prompt": "p", "chosen": "", "rejected": "r"}, "dpo", "chosen", "empty"),
    ({}, {"prompt": "p", "chosen": "c"}, "orpo", "rejected", "missing"),
    ({"type": {"field_chosen": "good"}}, {"prompt": "p", "good": "", "rejected": "r"}, "simpo", "good", "empty"),
    ({"type": {"prompt_format": "{system}: {prompt}"}}, {"prompt": "p", "completion": "c", "label": True},
     "kto", "system", "missing (prompt_format uses {system})"),
    ({"type": "chat_template.default"}, {**CHAT, "messages": None}, "dpo", "messages", "missing"),
    ({"type": "chat_template.default"}, {**CHAT, "messages": [{"role": "human", "content": "hi"}]}, "dpo",
     "messages[0].role", "role 'human' is not one of"),
    ({"type": "chat_template.default"}, {**CHAT, "messages": [{"role": "user", "content": 3}]}, "dpo",
     "messages[0].content", "expected a string"),
    ({"type": "chat_template.default"}, {**CHAT, "rejected": None}, "ipo", "rejected", "missing"),
    ({"type": "chat_template.default"}, {**CHAT, "chosen": []}, "dpo", "chosen", "expected a message"),
    ({"type": "chat_template.argilla_chat"}, {"chosen": [], "rejected": ORPO["rejected"]}, "dpo", "chosen",
     "expected a non-empty list"),
    ({"type": "chat_template.argilla"}, {**ORPO, "chosen": ORPO["chosen"][:1]}, "orpo", "chosen", "an even count"),
    ({"type": "chat_template.argilla"}, {**ORPO, "prompt": None}, "orpo", "prompt", "missing"),
    ({"type": "chatml.intel"}, {"question": "q", "completion": "c", "label": None}, "kto", "label", "missing"),
    ({"type": "chatml.intel"}, {"question": "q", "completion": "c", "label": "yes"}, "kto", "label",
     "expected true or false, got 'yes'"),
    ({"type": "llama3.argilla_chat"}, {"completion": [{"role": "user"}], "label": True}, "kto",
     "completion[0].content", "missing"),
    ({"type": "zephyr.nectar"}, {"prompt": "p", "answers": [{"answer": "a", "rank": 1}]}, "dpo", "answers",
     "at least two"),
    ({"type": "zephyr.nectar"}, {"prompt": "p", "answers": [{"answer": "a", "rank": "1"}, {"answer": "b", "rank": 2}]},
     "dpo", "answers[0].rank", "expected a number"),
])
def test_a_bad_row_names_its_field(entry, row, rl, field, message):
    got_field, got_message = bad_field(entry, row, rl)
    assert got_field == field
    assert message in got_message


def test_a_template_that_fails_on_a_row_refuses_the_row():
    template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}x"
    field, message = bad_field({"type": "chat_template.default"}, CHAT, chat_template="jinja",
                               chat_template_jinja=template)
    assert field == "messages" and "system first" in message


@pytest.mark.parametrize("entry, rl, keys", [
    ({"type": "alpaca"}, "dpo", ["datasets[0].type: 'alpaca' is a supervised (SFT) dataset type"]),
    ({"type": "chatml.intel"}, "orpo", ["datasets[0].type: 'chatml.intel' is a type for rl: dpo, ipo and simpo"]),
    ({"type": "passthrough"}, "kto", ["datasets[0].type: 'passthrough' is a type for rl: dpo, ipo and simpo"]),
    ({"type": {"field_instruction": "q", "chosen_format": "{answer}", "prompt_format": 3}}, "dpo",
     ["datasets[0].type.field_instruction: not a key of rl's user-defined type",
      "datasets[0].type.prompt_format: expected a string, got int",
      "datasets[0].type.chosen_format: bad placeholder 'answer'"]),
    ({"type": {"field_chosen": "c"}}, "kto", ["datasets[0].type.field_chosen: not a key"]),
    ({"type": {"completion_format": "{completion}{prompt}"}}, "kto", ["datasets[0].type.completion_format: bad placeholder"]),
    ({"type": "chat_template.default", "roles": {"user": "human"}}, "dpo", ["datasets[0].roles: expected a mapping"]),
    ({"type": "chat_template.default", "field_chosen": 3}, "dpo", ["datasets[0].field_chosen: expected a column"]),
    ({"type": "chat_template.default", "message_property_mappings": ["role"]}, "dpo",
     ["datasets[0].message_property_mappings: expected a mapping"]),
    ({"type": "chat_template.argilla", "chat_template": "nope"}, "orpo", ["datasets[0].chat_template: unknown chat"]),
    ({"type": "chatml.intel"}, "grpo", ["rl: 'grpo' is not a preference method"]),
    ({"type": "chatml.intel"}, None, ["rl: None is not a preference method"]),
])
def test_config_mistakes_name_their_key(entry, rl, keys):
    problems = config_error(entry, rl)
    assert len(problems) == len(keys), problems
    for problem, key in zip(problems, keys):
        assert problem.startswith(key), problems


def test_a_tokenizer_without_eos_is_refused_before_any_row():
    tokenizer = bpe_tokenizer("bytelevel")
    tokenizer.eos_token = None
    with pytest.raises(UserError, match="no EOS"):
        preference_formatter({"type": "chatml.intel"}, 0, {"rl": "dpo"}, tokenizer)


def test_dpo_prompt_has_bos_and_each_completion_eos():
    t = tok()
    [example] = preference_formatter({"type": "chatml.intel"}, 0, {"rl": "dpo"}, t)(INTEL)
    assert set(example) == {"prompt_ids", "chosen_ids", "rejected_ids"}
    assert t.decode(example["prompt_ids"]) == "<s><|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert t.decode(example["chosen_ids"]) == "4<|im_end|></s>"
    assert t.decode(example["rejected_ids"]) == "5<|im_end|></s>"
    assert example["prompt_ids"].count(t.bos_token_id) == 1


def test_a_completion_already_ending_in_eos_gets_no_second_one():
    t = tok()
    example = tokenize_dpo(t, "Q:", " yes</s>", " no", max_length=None)
    assert example["chosen_ids"].count(t.eos_token_id) == 1
    assert t.decode(example["rejected_ids"]).endswith("no</s>")
    example = tokenize_cpo(t, "Q:", " yes</s>", " no", max_length=None)
    assert example["chosen_ids"].count(t.eos_token_id) == 1


def test_orpo_and_simpo_put_bos_only_where_the_prompt_lacks_it():
    t = tok()
    plain = tokenize_cpo(t, "Q: hi", " yes", " no", max_length=None)
    written = tokenize_cpo(t, "<s>Q: hi", " yes", " no", max_length=None)
    assert plain == written and plain["prompt_ids"][0] == t.bos_token_id
    assert tokenize_dpo(t, "<s>Q: hi", " yes", " no", max_length=None)["prompt_ids"][:2] == [t.bos_token_id] * 2


def test_max_length_cuts_completions_and_drops_a_prompt_that_fills_it():
    t = tok()
    full = tokenize_dpo(t, "hello", " there there there", " no", max_length=None)
    room = len(full["prompt_ids"]) + 2
    cut = tokenize_dpo(t, "hello", " there there there", " no", max_length=room)
    assert cut["chosen_ids"] == full["chosen_ids"][:2]
    assert tokenize_dpo(t, "hello", " x", " y", max_length=len(full["prompt_ids"])) is None
    cpo = tokenize_cpo(t, "hello", " there there there", " no", max_length=room)
    assert len(cpo["prompt_ids"]) + len(cpo["chosen_ids"]) == room
    assert tokenize_cpo(t, "hello", " x", " y", max_length=len(full["prompt_ids"])) is None


def test_rows_longer_than_sequence_len_are_dropped_and_counted():
    t = tok()
    format_row = preference_formatter({"type": "passthrough"}, 0, {"rl": "dpo", "sequence_len": 12}, t)
    assert format_row({"prompt": "hi", "chosen": " yes", "rejected": " no"})
    assert format_row({"prompt": "hi " * 10, "chosen": " yes", "rejected": " no"}) == []
    assert format_row({"prompt": "hi", "chosen": " yes", "rejected": " no " * 10}) == []
    assert format_row.dropped_long == 2 and format_row.shortest_dropped > 12


def test_kto_examples_carry_the_label_and_the_whole_completion():
    t = tok()
    format_row = preference_formatter({"type": "chatml.prompt_pairs"}, 0, {"rl": "kto", "sequence_len": 64}, t)
    [good] = format_row({"system": None, "prompt": "p", "completion": "c", "label": True})
    [bad] = format_row({"system": None, "prompt": "p", "completion": "d", "label": 0})
    assert set(good) == {"prompt_ids", "completion_ids", "label"}
    assert good["label"] is True and bad["label"] is False
    assert t.decode(good["completion_ids"]) == "c<|im_end|></s>"
    ids, mask = kto_sequence(good["prompt_ids"], good["completion_ids"], len(good["prompt_ids"]) + 1)
    assert ids == good["prompt_ids"] + good["completion_ids"][:1] and mask == [0] * len(good["prompt_ids"]) + [1]


def test_kl_completions_rotate_by_one_within_each_batch():
    completions = [[1], [2], [3], [4], [5]]
    assert kl_completion_ids(completions, 2) == [[2], [1], [4], [3], [5]]
    assert kl_completion_ids(completions, 3) == [[3], [1], [2], [5], [4]]
    assert kl_completion_ids(completions, 8) == [[5], [1], [2], [3], [4]]


def test_the_text_step_alone():
    step = preference_texts({"type": {"prompt_format": "Q: {prompt}\nA:", "chosen_format": " {chosen}"}}, 0,
                            {"rl": "dpo"}, tok())
    assert step({"prompt": "hi", "chosen": "yes", "rejected": "no"}) == {
        "prompt": "Q: hi\nA:", "chosen": " yes", "rejected": "no"}
    step = preference_texts({"type": "llama3.argilla_chat"}, 0, {"rl": "kto"}, tok())
    texts = step({"completion": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                  "label": 1})
    assert texts == {
        "prompt": "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "completion": "yo<|eot_id|>", "label": True}
    assert texts["label"] is True
    step = preference_texts({"type": "chat_template.argilla"}, 0, {"rl": "orpo", "chat_template": "chatml"}, tok())
    assert step({**ORPO, "system": "sys"}) == {
        "prompt": "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "chosen": "hello<|im_end|>\n", "rejected": "bye<|im_end|>\n"}


# ---- what validate says about rl types -----------------------------------------------------------------------


@pytest.mark.parametrize("kind, rl, runs", [
    ("chat_template", "dpo", "chat_template.default"), ("chat_template.default", "ipo", "chat_template.default"),
    ("chatml", "simpo", "chatml.default"), ("llama3.intel", "dpo", "llama3.intel"),
    ("chatml.argilla_chat", "dpo", "chatml.argilla_chat"), ("zephyr.nectar", "dpo", "zephyr.nectar"),
    ("passthrough", "dpo", "passthrough"), (None, "dpo", "passthrough"), (None, "orpo", "passthrough"),
    (None, "kto", "passthrough"), ({"field_prompt": "q"}, "dpo", "user_defined.default"),
    ({"field_label": "ok"}, "kto", "user_defined.default"), ("chat_template.argilla", "orpo", "chat_template.argilla"),
    ("chatml.argilla", "kto", "chatml.argilla"), ("llama3.ultra", "kto", "llama3.ultra"),
])
def test_preference_types_as_axolotl_loads_them(kind, rl, runs):
    assert resolve_preference_type(kind, rl) == (runs, "")


@pytest.mark.parametrize("kind, rl, says", [
    ("alpaca", "dpo", "'alpaca' is a supervised (SFT) dataset type; with rl: dpo each dataset needs a preference type"),
    ("completion", "kto", "'completion' is a supervised (SFT) dataset type"),
    ("sharegpt:chat", "orpo", "supervised (SFT)"),
    ("chat_template", "orpo", "'chat_template' is a type for rl: dpo, ipo and simpo, not one rl: orpo reads"),
    ("chat_template.argilla", "dpo", "is a type for rl: orpo"),
    ("chatml.intel", "orpo", "supported with rl: orpo: chat_template.argilla, or no type"),
    ("passthrough", "kto", "no type (rows with prompt, completion, label)"),
    ("passthrough", "orpo", "is a type for rl: dpo, ipo and simpo, not one rl: orpo reads"),
    ("chatml.icr", "kto", "is a type for rl: dpo, ipo and simpo"),
    ("chatml.argilla", "dpo", "chatml (chatml.default) reads the same rows"),
    ("user_defined.default", "dpo", "written as a mapping"),
    ({"field_prompt": "q"}, "orpo", "rl: orpo has no user-defined (mapping) type"),
    ("dpo.chatml.intel", "dpo", "write 'chatml.intel'"),
    ("bradley_terry.chat_template", "dpo", "reward-model training"),
    ("my_module.my_strategy", "dpo", "names a prompt strategy module"),
    ("chatml.intell", "dpo", "names a prompt strategy module"),
    ("intel", "dpo", "unknown dataset type 'intel' for rl: dpo"),
    ("chatml.intel", "grpo", "rl: grpo has no preference dataset types"),
])
def test_refused_preference_types_say_why_and_what_is_supported(kind, rl, says):
    runs, why = resolve_preference_type(kind, rl)
    assert runs is None and says in why
    if rl != "grpo" and "mapping" not in says:
        assert f"supported with rl: {rl}:" in why


@pytest.mark.parametrize("kind", ["chatml.intel", "llama3.argilla_chat", "chat_template.argilla", "zephyr.nectar",
                                  "passthrough", "kto.chatml.argilla"])
def test_a_preference_type_without_rl_says_to_set_rl(kind):
    runs, why = resolve_dataset_type(kind)
    assert runs is None
    assert "preference-training type: it needs rl: (dpo, ipo, simpo, orpo, kto)" in why
    assert "supported without rl: alpaca, completion, chat_template" in why


def test_preference_rows_deduplicate_and_pair_kto_completions_within_micro_batches(tmp_path):
    """build_preference: exact duplicates dropped once asked (dataset_exact_deduplication), the prompt masked in
    both sequences, and KTO's KL completion the one before it within its micro_batch_size group (TRL's rotation)."""
    import datasets

    from ds_tp.data.preference_rows import build_preference

    pair = {"prompt_ids": [1, 5], "chosen_ids": [6, 2], "rejected_ids": [7, 2]}
    other = {"prompt_ids": [1, 8], "chosen_ids": [9, 2], "rejected_ids": [4, 2]}
    cfg = {"rl": "dpo", "sequence_len": 16, "dataset_exact_deduplication": True, "shuffle_merged_datasets": False}
    meta = build_preference(cfg, [pair, dict(pair), other], "x.jsonl", tmp_path / "dpo")
    assert meta["duplicates_removed"] == 1 and meta["train_rows"] == 2
    rows = datasets.load_from_disk(str(tmp_path / "dpo" / "train"))
    assert rows[0]["chosen_input_ids"] == [1, 5, 6, 2] and rows[0]["chosen_labels"] == [-100, -100, 6, 2]
    assert rows[0]["rejected_labels"] == [-100, -100, 7, 2]
    kto = [{"prompt_ids": [1, 10 + i], "completion_ids": [20 + i, 2], "label": i % 2 == 0} for i in range(4)]
    cfg = {"rl": "kto", "sequence_len": 16, "micro_batch_size": 2, "shuffle_merged_datasets": False}
    build_preference(cfg, kto, "x.jsonl", tmp_path / "kto")
    rows = datasets.load_from_disk(str(tmp_path / "kto" / "train"))
    assert [r["kl_input_ids"] for r in rows] == [[1, 10, 21, 2], [1, 11, 20, 2], [1, 12, 23, 2], [1, 13, 22, 2]]
    assert [r["kl_labels"][:2] for r in rows] == [[-100, -100]] * 4 and [r["label"] for r in rows] == [1, 0, 1, 0]
