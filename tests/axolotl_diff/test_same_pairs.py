"""Preference data (rl: dpo, ipo, simpo, orpo, kto): the same strings as Axolotl 0.21.0's own rl strategies, the
same rows kept by its length filter, and the same token ids as TRL 1.16's own trainer code on those strings.

Axolotl side: prompt_strategies.dpo / orpo / kto `load`, called as utils/data/rl.py calls them, then its
_drop_long_sequences. TRL side: DPOTrainer._prepare_dataset and DataCollatorForPreference (dpo, ipo),
ORPOTrainer / CPOTrainer.tokenize_row (orpo, simpo), KTOTrainer._prepare_dataset (with its KL
completions) and DataCollatorForUnpairedPreference (kto), run on a stand-in for the trainer object."""
from __future__ import annotations

import inspect
from functools import lru_cache, partial
from types import SimpleNamespace

import pytest

from ds_tp.data.preference import kl_completion_ids, kto_sequence, preference_formatter
from ds_tp.data.preference_text import preference_texts
from tests.axolotl_diff.harness import bpe_tokenizer

LLAMA3_SPECIALS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|begin_of_text|>")
TOKENIZERS = ("bytelevel", "metaspace")
TEXT_KEYS = ("prompt", "chosen", "rejected", "completion", "label")


@lru_cache(maxsize=None)
def tokenizer(kind: str):
    tok = bpe_tokenizer(kind)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *LLAMA3_SPECIALS]})
    return tok


@pytest.fixture(params=TOKENIZERS)
def tok(request):
    return tokenizer(request.param)


# ---- Axolotl's side ----------------------------------------------------------------------------------------


def axolotl_texts(entry: dict, cfg: dict, tok, rows: list[dict]) -> list[dict]:
    """Each row through the transform Axolotl's rl data loading gets for this dataset type."""
    from axolotl.prompt_strategies.dpo import load as load_dpo
    from axolotl.prompt_strategies.kto import load as load_kto
    from axolotl.prompt_strategies.orpo import load as load_orpo
    from axolotl.utils.dict import DictDefault

    kind = entry.get("type")
    if kind is None:  # no type: Axolotl uses the rows as they are
        return [dict(row) for row in rows]
    config = DictDefault({"sequence_len": 512, "dataset_num_proc": 1, **cfg, "datasets": [DictDefault(entry)]})
    name = "user_defined.default" if isinstance(kind, dict) else kind
    load = {"orpo": load_orpo, "kto": load_kto}.get(cfg["rl"], load_dpo)
    transform = load(name, config, dataset_idx=0)
    assert transform is not None, f"Axolotl cannot load {name!r} for rl: {cfg['rl']}"
    if isinstance(transform, tuple):
        transform = transform[0]
    if "tokenizer" in inspect.signature(transform).parameters:
        transform = partial(transform, tokenizer=tok)
    return [transform(dict(row)) for row in rows]


def axolotl_keeps(texts: dict, rl: str, tok, sequence_len: int) -> bool:
    from axolotl.utils.data.rl import _drop_long_sequences
    from axolotl.utils.schemas.enums import RLType

    return _drop_long_sequences(texts, RLType(rl), tok, sequence_len)


# ---- TRL's side --------------------------------------------------------------------------------------------


def trl_sequences(texts: list[dict], rl: str, tok, max_length: int, batch_size: int = 3) -> list[tuple]:
    """What TRL's trainer for rl trains on, per kept row: for each sequence its ids and completion mask.
    orpo, simpo: a row whose prompt fills max_length leaves TRL an empty completion (a NaN loss); ds-tp
    drops it, so it is left out here."""
    if not texts:
        return []
    if rl in ("orpo", "simpo"):
        out = [trl_cpo(t, rl, tok, max_length) for t in texts]
        return [pair for pair in out if all(1 in mask for _, mask in pair)]
    if rl == "kto":
        return trl_kto(texts, tok, max_length, batch_size)
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    stand_in = SimpleNamespace(_tokenizer=tok)
    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode="keep_start")
    rows = [{k: t[k] for k in ("prompt", "chosen", "rejected")} for t in texts]
    prepared = DPOTrainer._prepare_dataset(stand_in, Dataset.from_list(rows), tok, args, "train")
    collate = DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=max_length)
    out = []
    for example in prepared:
        batch = collate([{k: example[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        out.append(tuple(_unpadded(batch, row) for row in (0, 1)))
    return out


def trl_cpo(texts: dict, rl: str, tok, max_length: int) -> tuple:
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    trainer = ORPOTrainer if rl == "orpo" else CPOTrainer
    stand_in = SimpleNamespace(processing_class=tok, is_encoder_decoder=False, max_length=max_length)
    stand_in.build_tokenized_answer = partial(trainer.build_tokenized_answer, stand_in)
    batch = trainer.tokenize_row(stand_in, {k: texts[k] for k in ("prompt", "chosen", "rejected")})
    return tuple((batch[f"{side}_input_ids"], [int(label != -100) for label in batch[f"{side}_labels"]])
                 for side in ("chosen", "rejected"))


def trl_kto(texts: list[dict], tok, max_length: int, batch_size: int) -> list[tuple]:
    from datasets import Dataset
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference, KTOTrainer

    stand_in = SimpleNamespace(_tokenizer=tok, calculate_KL=True, desirable_weight=1.0, undesirable_weight=1.0)
    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, per_device_train_batch_size=batch_size)
    rows = [{k: t[k] for k in ("prompt", "completion", "label")} for t in texts]
    prepared = KTOTrainer._prepare_dataset(stand_in, Dataset.from_list(rows), tok, args, "train")
    collate = DataCollatorForUnpairedPreference(pad_token_id=tok.pad_token_id, max_length=max_length)
    out = []
    for example in prepared:
        batch = collate([example])
        kl = (batch["KL_input_ids"][0][batch["KL_attention_mask"][0] == 1].tolist(),
              batch["KL_completion_mask"][0][batch["KL_attention_mask"][0] == 1].tolist())
        out.append((_unpadded(batch, 0), kl, bool(batch["label"][0])))
    return out


def _unpadded(batch: dict, row: int) -> tuple[list[int], list[int]]:
    keep = batch["attention_mask"][row] == 1
    return batch["input_ids"][row][keep].tolist(), batch["completion_mask"][row][keep].tolist()


# ---- ds-tp's side, in the same shape -----------------------------------------------------------------------


def ds_tp_sequences(examples: list[dict], rl: str, max_length: int, batch_size: int = 3) -> list[tuple]:
    if rl == "kto":
        kl = kl_completion_ids([e["completion_ids"] for e in examples], batch_size)
        return [(kto_sequence(e["prompt_ids"], e["completion_ids"], max_length),
                 kto_sequence(e["prompt_ids"], other, max_length), e["label"]) for e, other in zip(examples, kl)]
    out = []
    for e in examples:
        prompt = e["prompt_ids"]
        out.append(tuple((prompt + e[side], [0] * len(prompt) + [1] * len(e[side]))
                         for side in ("chosen_ids", "rejected_ids")))
    return out


def same(entry: dict, cfg: dict, rows: list[dict], tok, *, expect_dropped: int | None = None) -> list[dict]:
    """Axolotl's strings equal ds-tp's text step; the rows its length filter keeps, tokenized by TRL, equal
    ds-tp's examples. Returns Axolotl's strings."""
    cfg = {"sequence_len": 512, **cfg}
    rl, sequence_len = cfg["rl"], cfg["sequence_len"]
    theirs = [{k: t[k] for k in TEXT_KEYS if k in t} for t in axolotl_texts(entry, cfg, tok, rows)]
    step = preference_texts(entry, 0, cfg, tok)
    ours = [step(row) for row in rows]
    assert ours == theirs
    kept = [t for t in theirs if axolotl_keeps(t, rl, tok, sequence_len)]
    format_row = preference_formatter(entry, 0, cfg, tok)
    examples = [example for row in rows for example in format_row(row)]
    expected = trl_sequences(kept, rl, tok, sequence_len)
    got = ds_tp_sequences(examples, rl, sequence_len)
    assert [_shown(tok, x) for x in got] == [_shown(tok, x) for x in expected]
    assert got == expected
    assert format_row.dropped_long == len(rows) - len(examples)
    if expect_dropped is not None:
        assert format_row.dropped_long == expect_dropped
    return theirs


def _shown(tok, item) -> list[str]:
    """Sequences as text with the completion in brackets, for a readable diff."""
    out = []
    for part in item:
        if isinstance(part, tuple):
            ids, mask = part
            out.append("".join(f"[{tok.decode([t])}]" if m else tok.decode([t]) for t, m in zip(ids, mask)))
    return out


PAIRED = ("dpo", "ipo", "simpo")

# ---- the cases ---------------------------------------------------------------------------------------------

MARKUP_ROWS = {
    "default": [
        {"system": "Be terse.", "prompt": "hello there", "chosen": "ciao", "rejected": "hello"},
        {"system": None, "prompt": " spaced ", "chosen": " out ", "rejected": "x"},
    ],
    "default_argilla_columns": [
        {"system": "", "instruction": "Say hi.", "chosen_response": "hi", "rejected_response": "no"},
    ],
    "default_column_order": [
        {"system": "s", "question": "the question", "input": "the input", "prompt": "the prompt", "chosen": "c",
         "rejected": "r"},
        {"system": "s", "question": "the question", "input": "the input", "chosen": "c", "rejected_response": "r"},
    ],
    "argilla_chat": [
        {"system": "never shown",
         "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bye"}]},
    ],
    "icr": [{"system": "sys", "input": "a task", "chosen": "done", "rejected": "nope"},
            {"system": None, "input": "b", "chosen": "c", "rejected": "d"}],
    "intel": [{"system": "You are helpful.", "question": "What is 2+2?", "chosen": "4", "rejected": "5"},
              {"system": "", "question": "Name a color", "chosen": "blue", "rejected": "table"}],
    "prompt_pairs": [{"system": "s", "prompt": "p", "chosen": "c", "rejected": "r"},
                     {"system": None, "prompt": "only", "chosen": "yes", "rejected": "no"}],
    "ultra": [{"system": None, "prompt": "hi",
               "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
               "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}],
}


@pytest.mark.parametrize("rl", PAIRED)
@pytest.mark.parametrize("family", ["chatml", "llama3"])
@pytest.mark.parametrize("variant", list(MARKUP_ROWS))
def test_chatml_and_llama3_pairs(variant, family, rl, tok):
    name = "default" if variant.startswith("default") else variant
    same({"type": f"{family}.{name}"}, {"rl": rl}, MARKUP_ROWS[variant], tok)


@pytest.mark.parametrize("rl", PAIRED)
def test_chatml_and_llama3_bare_names_are_their_default(rl, tok):
    texts = same({"type": "chatml"}, {"rl": rl}, MARKUP_ROWS["default"], tok)
    assert texts[0]["chosen"] == "ciao<|im_end|>"
    texts = same({"type": "llama3"}, {"rl": rl}, MARKUP_ROWS["default"], tok)
    assert texts[0]["chosen"] == "ciao<|eot_id|>"


CHAT_ROWS = [
    {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
     "chosen": {"role": "assistant", "content": "hello"}, "rejected": {"role": "assistant", "content": "bye"}},
    {"messages": [{"role": "user", "content": "count"}, {"role": "assistant", "content": "one"},
                  {"role": "user", "content": "more"}],
     "chosen": [{"role": "assistant", "content": "two"}], "rejected": [{"role": "assistant", "content": " three "}]},
]
STRING_ROWS = [{"messages": "just a question", "chosen": "an answer", "rejected": "a worse answer"}]


@pytest.mark.parametrize("rl", PAIRED)
@pytest.mark.parametrize("template", [{"chat_template": "chatml"}, {"chat_template": "llama3"}, {},
                                      {"chat_template": "jinja", "chat_template_jinja": "CHATML"}],
                         ids=["chatml", "llama3", "tokenizer_default", "jinja"])
def test_chat_template_default(template, rl, tok):
    from ds_tp.data.chat import CHATML

    if template.get("chat_template_jinja") == "CHATML":
        template = {**template, "chat_template_jinja": CHATML}
    same({"type": "chat_template.default"}, {"rl": rl, **template}, CHAT_ROWS + STRING_ROWS, tok)


def test_the_tokenizers_template_with_bos_text_gives_trls_double_bos(tok):
    """The tokenizer's own template writes bos_token; TRL's DPO tokenizing adds BOS again (Axolotl's fix for
    it, AxolotlDPOTrainer._tokenize, is never called by TRL 1.16)."""
    same({"type": "chat_template"}, {"rl": "dpo"}, CHAT_ROWS, tok)
    [example] = preference_formatter({"type": "chat_template"}, 0, {"rl": "dpo"}, tok)(CHAT_ROWS[0])
    assert example["prompt_ids"][:2] == [tok.bos_token_id] * 2
    [example] = preference_formatter({"type": "chat_template"}, 0, {"rl": "simpo"}, tok)(CHAT_ROWS[0])
    assert example["prompt_ids"][:2] != [tok.bos_token_id] * 2  # CPO puts BOS only where it is missing


@pytest.mark.parametrize("rl", PAIRED)
def test_chat_template_options(rl, tok):
    entry = {"type": "chat_template.default", "field_messages": "conversation", "field_chosen": "good",
             "field_rejected": "bad", "message_property_mappings": {"role": "from", "content": "value"},
             "roles": {"user": ["human"], "assistant": ["gpt", "assistant"], "system": ["system"]}}
    rows = [{"conversation": [{"from": "system", "value": "sys"}, {"from": "human", "value": "hi"}],
             "good": {"from": "gpt", "value": "hello"}, "bad": "meh"}]
    same(entry, {"rl": rl, "chat_template": "chatml"}, rows, tok)


THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.reasoning_content %}<think>{{ m.reasoning_content }}"
    "</think>{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}")


@pytest.mark.parametrize("rl", PAIRED)
def test_chat_template_further_mapped_properties_reach_the_template(rl, tok):
    entry = {"type": "chat_template.default",
             "message_property_mappings": {"role": "role", "content": "content", "reasoning_content": "thinking"}}
    rows = [{"messages": [{"role": "user", "content": "2+2?", "thinking": None}],
             "chosen": {"role": "assistant", "content": "4", "thinking": "adding"},
             "rejected": {"role": "assistant", "content": "5", "thinking": None}}]
    cfg = {"rl": rl, "chat_template": "jinja", "chat_template_jinja": THINKING_TEMPLATE}
    texts = same(entry, cfg, rows, tok)
    assert texts[0]["chosen"] == "<think>adding</think>4<|im_end|>"


@pytest.mark.parametrize("rl", PAIRED)
@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_chat_template_argilla_chat(template, rl, tok):
    rows = [{"chosen": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "bye"}]}]
    same({"type": "chat_template.argilla_chat"}, {"rl": rl, "chat_template": template}, rows, tok)


USER_DEFINED = [
    ({}, [{"prompt": "p", "chosen": "c", "rejected": "r"}]),
    ({"field_prompt": "q", "field_chosen": "good", "field_rejected": "bad", "field_system": "sys",
      "prompt_format": "[{system}] {prompt}\n", "chosen_format": "{chosen}!", "rejected_format": "<{rejected}>"},
     [{"q": "question", "good": "yes", "bad": "no", "sys": "be kind"},
      {"q": "question", "good": "yes", "bad": "no", "sys": None}]),
    ({"prompt_format": "Q: {prompt} A:"}, [{"prompt": "p", "chosen": "c", "rejected": "r"}]),
]


@pytest.mark.parametrize("rl", PAIRED)
@pytest.mark.parametrize("spec, rows", USER_DEFINED, ids=["defaults", "every_key", "format_only"])
def test_user_defined_pairs(spec, rows, rl, tok):
    same({"type": spec}, {"rl": rl}, rows, tok)


@pytest.mark.parametrize("rl", ["dpo", "simpo", "orpo"])
@pytest.mark.parametrize("entry", [{"type": "passthrough"}, {}], ids=["passthrough", "no_type"])
def test_passthrough_and_no_type(entry, rl, tok):
    if rl == "orpo" and entry:
        pytest.skip("Axolotl has no orpo passthrough (only no type)")
    rows = [{"prompt": "Q: hi\nA:", "chosen": " hello</s>", "rejected": " bye"}]
    same(entry, {"rl": rl}, rows, tok)


@pytest.mark.parametrize("rl", PAIRED)
def test_zephyr_nectar(rl, tok):
    rows = [{"prompt": "hi", "answers": [{"answer": "best", "rank": 1}, {"answer": "worst", "rank": 3},
                                         {"answer": "middle", "rank": 2}]}]
    texts = same({"type": "zephyr.nectar"}, {"rl": rl}, rows, tok)
    assert (texts[0]["chosen"], texts[0]["rejected"]) == ("worst", "middle")  # Axolotl's order, as it is


ORPO_ROWS = [
    {"system": "Be terse.",
     "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
     "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bye"}]},
    {"system": None,
     "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
     "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}, {"role": "assistant", "content": "e"}]},
]


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_orpo_argilla(template, tok):
    same({"type": "chat_template.argilla"}, {"rl": "orpo", "chat_template": template}, ORPO_ROWS, tok)
    with_prompt = [{**row, "prompt": "the prompt column"} for row in ORPO_ROWS]
    same({"type": "chat_template.argilla"}, {"rl": "orpo", "chat_template": template}, with_prompt, tok)


KTO_ROWS = {
    "argilla": [{"system": "sys", "instruction": "do it", "completion": "done", "label": True},
                {"system": None, "instruction": "again", "completion": "no", "label": False}],
    "argilla_chat": [{"completion": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                      "label": True},
                     {"completion": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "a"}], "label": False}],
    "intel": [{"system": "", "question": "2+2?", "completion": "4", "label": True},
              {"system": "math", "question": "3+3?", "completion": "7", "label": False}],
    "prompt_pairs": [{"system": None, "prompt": "p", "completion": "c", "label": True},
                     {"system": "s", "prompt": "p2", "completion": "c2", "label": False}],
    "ultra": [{"system": None, "prompt": "hi", "completion": "hello there", "label": False},
              {"system": None, "prompt": "yo", "completion": "hey", "label": True}],
}


@pytest.mark.parametrize("family", ["chatml", "llama3"])
@pytest.mark.parametrize("variant", list(KTO_ROWS))
def test_kto_types(variant, family, tok):
    same({"type": f"{family}.{variant}"}, {"rl": "kto"}, KTO_ROWS[variant], tok)


@pytest.mark.parametrize("spec, rows", [
    ({}, [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "q", "completion": "d", "label": False}]),
    ({"field_prompt": "q", "field_completion": "a", "field_label": "ok", "field_system": "sys",
      "prompt_format": "{system}|{prompt}", "completion_format": "{completion}."},
     [{"q": "x", "a": "y", "ok": True, "sys": "be kind"}]),
], ids=["defaults", "every_key"])
def test_kto_user_defined(spec, rows, tok):
    same({"type": spec}, {"rl": "kto"}, rows, tok)


def test_kto_no_type_and_kl_pairs_across_batches(tok):
    """Seven rows in batches of three: the KL completions rotate within each batch, the last one short;
    prompts of different lengths, so a KL sequence is cut at sequence_len differently from its own."""
    rows = [{"prompt": f"question {'x ' * i}?", "completion": f"answer {'y ' * (7 - i)}", "label": i % 2 == 0}
            for i in range(7)]
    longest = max(len(tok(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"]) for r in rows)
    same({}, {"rl": "kto", "sequence_len": longest}, rows, tok, expect_dropped=0)


@pytest.mark.parametrize("rl", ["dpo", "simpo", "orpo", "kto"])
def test_sequence_len_filters_and_cuts(rl, tok):
    """Rows around sequence_len: Axolotl's filter drops the long ones (counted without BOS and EOS), TRL
    drops a prompt that fills max_length (dpo, kto; ds-tp also for orpo, simpo) and cuts the completions
    of the rest that its BOS and EOS push over."""
    prompt = " ".join(["hello"] * 4)
    sequence_len = len(tok(prompt, add_special_tokens=False)["input_ids"]) + 1
    rows = [(prompt, "<|im_end|>", "<|im_end|>")]  # fits Axolotl's count exactly; with BOS the prompt fills max_length
    rows += [(" ".join(["hello"] * a), " there" * b + "<|im_end|>", " ciao<|im_end|>") for a in (1, 2) for b in range(1, 7)]
    if rl == "kto":
        rows = [{"prompt": p, "completion": c, "label": i % 2 == 0} for i, (p, c, _) in enumerate(rows)]
    else:
        rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows]
    entry = {} if rl in ("orpo", "kto") else {"type": "passthrough"}
    cfg = {"rl": rl, "sequence_len": sequence_len}
    same(entry, cfg, rows, tok)
    format_row = preference_formatter(entry, 0, cfg, tok)
    kept = [e for row in rows for e in format_row(row)]
    assert format_row(rows[0]) == []
    assert 0 < len(kept) < len(rows) - 1
    completions = [e.get("chosen_ids", e.get("completion_ids")) for e in kept]
    if rl != "kto":  # kto keeps the completion whole; kto_sequence cuts it
        assert all(len(e["prompt_ids"]) + len(c) <= sequence_len for e, c in zip(kept, completions))
    cut = [kto_sequence(e["prompt_ids"], c, sequence_len)[0] for e, c in zip(kept, completions)]
    assert any(ids[-1] != tok.eos_token_id for ids in cut) and any(ids[-1] == tok.eos_token_id for ids in cut)


MERGING_ROWS = [{"prompt": "hel", "chosen": "lo there", "rejected": "p"}, {"prompt": "the", "chosen": "re", "rejected": "n"}]


def test_a_prompt_that_merges_with_its_completion_dpo():
    """Metaspace BPE merges across the prompt/completion boundary here ("hel" + "lo"): TRL's DPO starts both
    completions where the prompt's ids and the prompt + completion's ids first differ."""
    same({"type": "passthrough"}, {"rl": "dpo"}, MERGING_ROWS, tokenizer("metaspace"))


@pytest.mark.parametrize("rl", ["orpo", "simpo"])
def test_a_prompt_that_merges_with_one_completion_cpo(rl):
    """TRL's ORPO/CPO give chosen and rejected their own prompt ids; when only one completion merges with the
    prompt they differ by that token. ds-tp's one prompt_ids is their common part: the same sequences, and the
    side whose prompt is longer trains on that one extra token, which TRL leaves out (the only difference)."""
    tok = tokenizer("metaspace")
    entry, cfg = {} if rl == "orpo" else {"type": "passthrough"}, {"rl": rl, "sequence_len": 512}
    format_row = preference_formatter(entry, 0, cfg, tok)
    got = ds_tp_sequences([e for row in MERGING_ROWS for e in format_row(row)], rl, 512)
    expected = trl_sequences(MERGING_ROWS, rl, tok, 512)
    assert [[ids for ids, _ in pair] for pair in got] == [[ids for ids, _ in pair] for pair in expected]
    differences = [(row, side, i) for row, (ours, theirs) in enumerate(zip(got, expected))
                   for side in (0, 1) for i, (a, b) in enumerate(zip(ours[side][1], theirs[side][1])) if a != b]
    assert differences == [(0, 1, 1)]  # row 0, rejected: the prompt's last token "hel"
    assert got[1] == expected[1]
