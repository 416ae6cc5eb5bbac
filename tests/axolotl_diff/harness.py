"""Run one dataset entry through Axolotl's own dataset wrapper and through ds-tp's formatter."""
from __future__ import annotations

from ds_tp.data.formats import formatter_for


def axolotl_examples(entry: dict, cfg: dict, tokenizer, rows: list[dict]) -> list[tuple[list, list]]:
    return [(list(r["input_ids"]), list(r["labels"])) for r in axolotl_dataset(entry, cfg, tokenizer, rows)]


def axolotl_dataset(entry: dict, cfg: dict, tokenizer, rows: list[dict]):
    """Axolotl's tokenized dataset of `rows`, through the wrapper its data preparation uses."""
    from axolotl.utils.data.wrappers import get_dataset_wrapper
    from axolotl.utils.dict import DictDefault
    from datasets import Dataset

    kind = entry["type"]
    base, style = (kind.split(":", 1) + [None])[:2] if isinstance(kind, str) else (None, None)
    config = DictDefault({"sequence_len": 512, "dataset_num_proc": 1, "train_on_inputs": False, **cfg})
    dataset_config = DictDefault({"path": "rows.jsonl", **entry})
    wrapped, _ = get_dataset_wrapper(dataset_config, tokenizer, config, base, Dataset.from_list(rows), style)
    return wrapped


def ds_tp_examples(entry: dict, cfg: dict, tokenizer, rows: list[dict]) -> list[tuple[list, list]]:
    format_row = formatter_for(entry, 0, {"sequence_len": 512, **cfg}, tokenizer)
    return [(list(ids), list(labels)) for row in rows for ids, labels in format_row(row)]


def shown(tokenizer, ids, labels) -> str:
    """A row as text with its untrained tokens in brackets, for a readable assertion diff."""
    return "".join(tokenizer.decode([t]) if label != -100 else f"[{tokenizer.decode([t])}]"
                   for t, label in zip(ids, labels))


def bpe_tokenizer(kind: str):
    """A small BPE tokenizer trained here on fixed text: "metaspace" (SentencePiece-style '▁' words, as
    Llama 2 / Mistral) or "bytelevel" (GPT-2-style bytes, as Llama 3 / Qwen). BOS is added to every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from ds_tp.assets import CHAT_TEMPLATE, generate_quickstart_rows

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=kind == "metaspace"))
    if kind == "metaspace":
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
    rows = generate_quickstart_rows(300, 7)
    corpus = [" ".join(str(v) for v in row.values()) for row in rows]
    corpus += ["Below is an instruction that describes a task. Write a response that appropriately completes "
               "the request. ### Instruction: ### Input: ### Response: system user assistant hello there ciao"] * 5
    alphabet = pre_tokenizers.ByteLevel.alphabet() if kind == "bytelevel" else []
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator(corpus, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok
