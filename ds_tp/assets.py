"""The embedded quickstart: a small alpaca dataset of toy tasks, a tokenizer built from it and a
tiny, randomly initialised LlamaForCausalLM, all made locally (no network) and deterministically.

`base_model: builtin:tiny-llama` resolves to a folder under $DS_TP_HOME (default ~/.cache/ds_tp)
that is built on first use.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import string
import tempfile
from pathlib import Path

from ds_tp.errors import Problem, UserError

# name -> versioned folder; bump the version when the asset's bytes change.
BUILTIN_MODELS = {"tiny-llama": "tiny-llama-v1"}
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
# Whole alpaca/chat template pieces are single tokens, so a prompt is short enough for a tiny
# model's sequence_len while the task text itself stays character-level (learnable letter by letter).
TEMPLATE_PIECES = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n",
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n",
    "\n\n### Input:\n",
    "\n\n### Response:\n",
    "<|system|>\n", "<|user|>\n", "<|assistant|>\n",
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
TINY_LLAMA_SHAPE = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=1024)
QUICKSTART_TASKS = ("last", "first", "parity", "count", "upper")
QUICKSTART_INSTRUCTIONS = {"last": "Last letter?", "first": "First letter?", "count": "How many letters?",
                           "upper": "Uppercase it."}
LETTERS = "abcdefgh"
QUICKSTART_SEED = 1234  # tasks.jsonl; heldout.jsonl uses HELDOUT_SEED
HELDOUT_SEED = 98765


def generate_quickstart_rows(n: int, seed: int) -> list[dict]:
    """n alpaca rows of five toy tasks on 3-5 letter words over LETTERS, or numbers below 1000,
    with answers of 1-5 characters. A 0.26M-parameter Llama learns them in a few hundred steps
    (see scripts/make_quickstart_assets.py); a small alphabet is what makes copying letters quick
    to learn for a model with 16-dimensional attention heads."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        task = rng.choice(QUICKSTART_TASKS)
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 5)))
        if task == "parity":
            number = rng.randrange(1000)
            rows.append({"instruction": "Even or odd?", "input": str(number),
                         "output": "even" if number % 2 == 0 else "odd"})
            continue
        answer = {"last": word[-1], "first": word[0], "count": str(len(word)), "upper": word.upper()}[task]
        rows.append({"instruction": QUICKSTART_INSTRUCTIONS[task], "input": word, "output": answer})
    return rows


def wrong_answer(row: dict, rng: random.Random) -> str:
    """A wrong answer to a quickstart row: the other parity, a count off by one, or one letter of the answer
    replaced by a letter the word does not contain (so a model that reads the word can tell them apart)."""
    answer = row["output"]
    if answer in ("even", "odd"):
        return "odd" if answer == "even" else "even"
    if answer.isdigit():
        return str(int(answer) + rng.choice((-1, 1)))
    position = rng.randrange(len(answer))
    absent = [c for c in LETTERS if c not in row["input"]]
    letter = rng.choice(absent)
    return answer[:position] + (letter.upper() if answer.isupper() else letter) + answer[position + 1:]


def generate_preference_rows(n: int, seed: int) -> list[dict]:
    """n preference pairs in Axolotl's chat_template.default layout over the quickstart's tasks: the prompt
    as messages, the right answer chosen, a wrong one (wrong_answer) rejected; which is right is checkable."""
    rng = random.Random(seed + 1)
    rows = []
    for task in generate_quickstart_rows(n, seed):
        prompt = f"{task['instruction']}\n{task['input']}"
        rows.append({"messages": [{"role": "user", "content": prompt}],
                     "chosen": {"role": "assistant", "content": task["output"]},
                     "rejected": {"role": "assistant", "content": wrong_answer(task, rng)}})
    return rows


def build_tokenizer(rows: list[dict]):
    """A character-level tokenizer (printable ASCII plus any other character in rows) with the
    template pieces as whole tokens; BOS is added to every encoded text, EOS never (like Llama)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [UNK, BOS, EOS, PAD]
    seen = {ch for row in rows for value in row.values() if isinstance(value, str) for ch in value}
    characters = sorted(set(string.printable) | seen)
    vocab = {token: index for index, token in enumerate(specials + characters)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # join characters back without spaces
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    backend.add_tokens([AddedToken(piece, normalized=False) for piece in TEMPLATE_PIECES])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        unk_token=UNK, model_max_length=TINY_LLAMA_SHAPE["max_position_embeddings"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(out_dir: Path, *, seed: int = 0) -> Path:
    """Write tokenizer + config + safetensors of a seeded, randomly initialised LlamaForCausalLM.
    The same seed gives the same bytes. The vocab is rounded up to a multiple of 8 so tensor
    parallelism can split the embeddings and lm_head; embeddings are untied (TP refuses tied ones)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(generate_quickstart_rows(2000, QUICKSTART_SEED))
    config = LlamaConfig(vocab_size=-(-len(tokenizer) // 8) * 8, tie_word_embeddings=False, rms_norm_eps=1e-6,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **TINY_LLAMA_SHAPE)
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "ds_tp_asset.json").write_text(json.dumps({"builder": "ds_tp.assets.build_tiny_llama",
                                                          "seed": seed}) + "\n", encoding="utf-8")
    return out_dir


def assets_home() -> Path:
    return Path(os.environ.get("DS_TP_HOME") or "~/.cache/ds_tp").expanduser() / "assets"


def built_folder(name: str) -> Path | None:
    """Where builtin model `name` is (or will be) built, or None for a name that is not builtin."""
    from ds_tp.families import TINY_FAMILIES, folder_name

    short = name.removeprefix("builtin:")
    family = short.removeprefix("tiny-") if short.startswith("tiny-") else None
    if short in BUILTIN_MODELS:
        return assets_home() / BUILTIN_MODELS[short]
    return assets_home() / folder_name(family) if family in TINY_FAMILIES else None


def resolve_builtin_model(name: str) -> Path:
    """`builtin:tiny-llama` (or `tiny-llama`) -> its local folder, built there on first use. Built in
    a temporary sibling and renamed into place, so ranks or nodes racing to build it are safe: the
    first rename wins and the others use that folder."""
    from ds_tp.families import TINY_FAMILIES, build_tiny_family, folder_name

    short = name.removeprefix("builtin:")
    family = short.removeprefix("tiny-") if short.startswith("tiny-") else None
    if short not in BUILTIN_MODELS and family not in TINY_FAMILIES:
        known = [*BUILTIN_MODELS, *(f"tiny-{f}" for f in TINY_FAMILIES)]
        raise UserError(Problem(f"unknown builtin model {name!r}", key="base_model",
                                hint="known: " + ", ".join(f"builtin:{k}" for k in known)))
    final = assets_home() / (BUILTIN_MODELS[short] if short in BUILTIN_MODELS else folder_name(family))
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        if short in BUILTIN_MODELS:
            build_tiny_llama(scratch / "model")
        else:
            build_tiny_family(family, scratch / "model")
        try:
            os.rename(scratch / "model", final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 8) -> float:
    """Fraction of alpaca rows whose greedy answer (decoded up to EOS, stripped) equals `output`."""
    import torch

    from ds_tp.data.prompts import alpaca_prompt

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for row in rows:
            ids = list(tokenizer(alpaca_prompt(row["instruction"], row.get("input") or ""))["input_ids"])
            if ids and ids[-1] == tokenizer.eos_token_id:
                ids.pop()
            answer: list[int] = []
            for _ in range(max_new_tokens):
                logits = model(torch.tensor([ids + answer], device=device)).logits
                token = int(logits[0, -1].argmax())
                if token == tokenizer.eos_token_id:
                    break
                answer.append(token)
            correct += tokenizer.decode(answer, skip_special_tokens=True).strip() == row["output"].strip()
    model.train(was_training)
    return correct / len(rows) if rows else 0.0
