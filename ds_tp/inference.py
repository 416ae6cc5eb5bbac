"""`ds-tp inference CONFIG [--lora-model-dir DIR] [--prompt TEXT]` (Axolotl's `axolotl inference`): answer
prompts with the model CONFIG trained, tokenized exactly as training tokenized a row's prompt part, so the model
sees the tokens it learned to answer. Model: base_model + an adapter (--lora-model-dir, else lora_model_dir, else
output_dir) for an adapter run; else the model exported to output_dir, else base_model."""
from __future__ import annotations

import sys
from pathlib import Path

from ds_tp.config import load_config
from ds_tp.errors import Problem, UserError

AXOLOTL_MAX_NEW_TOKENS = 1024  # Axolotl's GenerationConfig in cli/inference.py
AXOLOTL_SAMPLING = {"top_p": 0.95, "top_k": 40, "repetition_penalty": 1.1}


def run_inference(config: Path, overrides: list[str], *, lora_model_dir: Path | None, prompt: str | None,
                  max_new_tokens: int | None, temperature: float | None, stdin=sys.stdin, out=sys.stdout,
                  input_text: str | None = None) -> None:
    """Answer `prompt`, or stdin: all of it as one prompt when it is a pipe or file (Axolotl reads until
    Ctrl-D), one prompt per line when it is a terminal, until EOF or an empty line. Only the generated text
    goes to `out`, so answers can be piped; the prompt marker and which model was loaded go to stderr.

    temperature None or 0 decodes greedily: reproducible, and what the quickstart's accuracy check measures.
    Axolotl always samples (temperature 0.9, top_p 0.95, top_k 40, repetition penalty 1.1); a temperature
    > 0 samples with that temperature and Axolotl's other settings."""
    new_tokens = _check_generation(max_new_tokens, temperature)
    if prompt is not None and not prompt.strip():
        raise UserError(Problem("empty prompt", where="--prompt"))
    cfg = load_config(config, overrides, None)  # the layout does not matter to one process
    interactive = prompt is None and bool(getattr(stdin, "isatty", lambda: False)())
    if prompt is None and not interactive:
        prompt = stdin.read()
        if not prompt.strip():
            raise UserError(Problem("empty prompt (nothing was read)", where="stdin"))
    try:
        model, tokenizer = load_model(cfg, lora_model_dir)
        stops = stop_ids(model, tokenizer, cfg.values)

        def ask(text: str) -> str:
            ids = prompt_ids(text, cfg.values, tokenizer, input_text)
            return generate(model, tokenizer, ids, stops, new_tokens, temperature)

        if interactive:
            return _loop(ask, stdin, out)
        print(ask(str(prompt)), file=out, flush=True)
    except UserError as exc:
        raise cfg.at_keys(exc) from None


def _check_generation(max_new_tokens: int | None, temperature: float | None) -> int:
    """The flags, checked before anything is loaded (a typo should not cost a model load)."""
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or max_new_tokens < 1):
        raise UserError(Problem(f"expected a positive integer, got {max_new_tokens!r}", where="--max-new-tokens"))
    if temperature is not None and not 0 <= temperature < float("inf"):  # also refuses nan
        raise UserError(Problem(f"expected 0 (greedy) or more, got {temperature!r}", where="--temperature"))
    return max_new_tokens or AXOLOTL_MAX_NEW_TOKENS


def _loop(ask, stdin, out) -> None:
    """One prompt per line from a terminal; a prompt refused (too long) is reported and the session goes on."""
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line.strip():
            return
        try:
            print(ask(line), file=out, flush=True)
        except UserError as exc:
            print("\n".join(f"error: {problem}" for problem in exc.problems), file=sys.stderr)


def has_model(folder: Path) -> bool:
    """A finished export: config.json and the weights, in one file (runfiles.MODEL_FILES) or sharded."""
    from ds_tp.runfiles import MODEL_FILES

    return all((folder / name).is_file() for name in MODEL_FILES) or (
        (folder / "config.json").is_file() and (folder / "model.safetensors.index.json").is_file())


def adapter_folder(values: dict, flag: Path | None) -> Path | None:
    """The adapter to apply, checked by merge_lora.adapter_files; None for a run without one. An adapter run
    with no adapter anywhere is refused: Axolotl would attach a new, untrained LoRA and answer with the base."""
    from ds_tp.merge_lora import adapter_files

    if flag is not None:
        try:
            adapter_files(Path(flag))
        except UserError as exc:
            raise UserError([Problem(p.message, where="--lora-model-dir", hint=p.hint) for p in exc.problems]) from None
        return Path(flag)
    if values.get("adapter") not in ("lora", "qlora"):
        return None
    folder = Path(values.get("lora_model_dir") or values.get("output_dir", "./model-out"))
    if not values.get("lora_model_dir") and not (folder / "adapter_config.json").is_file():
        raise UserError(Problem(f"{folder}: no trained adapter here (adapter_config.json)", key="output_dir",
                                hint="train first, or pass --lora-model-dir"))
    adapter_files(folder)
    return folder


def load_model(cfg, lora_model_dir: Path | None = None):
    """(the model in eval mode, on cuda when there is one; its tokenizer). The tokenizer is the one training
    saved next to the weights or adapter, else base_model's with the config's tokens, as training builds it."""
    import torch
    from transformers.utils import logging as hf_logging

    from ds_tp.model_config import load_tokenizer, resolve_model_path

    hf_logging.disable_progress_bar()  # "Loading weights" bars: the answer is what the user waits for

    values = cfg.values
    output_dir = Path(values.get("output_dir", "./model-out"))
    adapter = adapter_folder(values, lora_model_dir)
    trained = adapter is None and has_model(output_dir)
    folder = str(output_dir) if trained else resolve_model_path(values["base_model"], cfg.source.parent)
    saved = output_dir if trained else adapter
    own = saved is not None and (saved / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(saved), {"trust_remote_code": values.get("trust_remote_code")}) if own else (
        load_tokenizer(folder, values))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _from_pretrained(folder, values, device)
    if not trained:  # grown to the tokenizer as training grew it, so saved resized embeddings fit
        from ds_tp.train.model import resize_embeddings
        from ds_tp.translators.model_shape import embedding_rows
        rows = embedding_rows(len(tokenizer), model.get_input_embeddings().num_embeddings,
                              bool(values.get("resize_token_embeddings_to_32x")), bool(values.get("shrink_embeddings")))
        resize_embeddings(model, rows, values)
    if adapter is not None:
        model = _with_adapter(model, adapter, folder)
    print(f"inference: {folder}" + (f" + adapter {adapter}" if adapter else ""), file=sys.stderr)
    return model.to(device).eval(), tokenizer


def _with_adapter(model, adapter: Path, folder: str):
    """peft's PeftModel.from_pretrained; an adapter trained on another model is one line, not a traceback."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(Problem(f"does not fit {folder}: {' '.join(str(exc).split())[:300]}", where=str(adapter),
                                hint="use the base_model the adapter was trained on")) from None


def _from_pretrained(folder: str, values: dict, device: str):
    """The weights in full precision (fp32 on the CPU, bf16/fp16 on a GPU as the run trains). A QLoRA base is
    not quantized again: the adapter runs on the weights it was quantized from, as merge-lora merges it."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from ds_tp.model_config import load_model_config

    cuda = device == "cuda"
    dtype = (torch.bfloat16 if cuda and values.get("bf16") in (True, "auto") and torch.cuda.is_bf16_supported()
             else torch.float16 if cuda and values.get("fp16") else torch.float32)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, config=load_model_config(folder, values), dtype=dtype,
                                                     trust_remote_code=bool(values.get("trust_remote_code")))
    except (OSError, ValueError) as exc:
        raise UserError(Problem(f"cannot load the model in {folder}: {str(exc).strip().splitlines()[0]}",
                                key="base_model")) from None
    # generation_config.json's settings (a repetition penalty...) would fill generate()'s gaps: keep its EOS only
    model.generation_config = GenerationConfig(eos_token_id=model.generation_config.eos_token_id)
    return model


def prompt_style(values: dict) -> tuple[str, dict]:
    """('chat' | 'instruction' | 'text', the dataset entry that decides it), from the first dataset as Axolotl's
    resolve_chat_template_str reads it: a chat template when the config or that dataset names one; else its
    instruction format (alpaca or a mapping); else plain text (completion; rl types other than chat_template.*)."""
    datasets = values.get("datasets") or [{}]
    entry = datasets[0] if isinstance(datasets[0], dict) else {}
    kind = entry.get("type")
    chat = isinstance(kind, str) and kind.startswith("chat_template")
    if chat or values.get("chat_template"):
        return "chat", entry if chat else {}
    if values.get("rl") or kind == "completion":
        return "text", entry
    return "instruction", entry if isinstance(kind, dict) else {"type": "alpaca"}


def prompt_ids(prompt: str, values: dict, tokenizer, input_text: str | None = None) -> list[int]:
    """`prompt` as training tokenized a row's prompt part, without a trailing EOS (the answer follows the prompt,
    not an end of text). Refused when it fills sequence_len: training cut or dropped such rows. input_text: an
    instruction format's input field (alpaca's "### Input:"); other formats get it on a line after the prompt."""
    style, entry = prompt_style(values)
    text = prompt.strip()
    if input_text and style != "instruction":
        text = f"{text}\n{input_text.strip()}"
    if style == "chat":
        ids = _chat_ids(text, entry, values, tokenizer)
    elif style == "instruction":
        ids = _instruction_ids(text, entry, values, tokenizer, input_text)
    else:
        ids = list(tokenizer(text)["input_ids"])
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids.pop()
    limit = int(values.get("sequence_len") or 2048)  # formats.formatter_for's default
    if len(ids) >= limit:
        raise UserError(Problem(f"fills sequence_len ({limit} tokens), which training cut prompts to", where="prompt"))
    return ids


def _instruction_ids(text: str, entry: dict, values: dict, tokenizer, input_text: str | None = None) -> list[int]:
    """The training formatter itself on a row with an empty answer: its ids are then the prompt part alone."""
    from ds_tp.data.formats import formatter_for

    spec = entry["type"] if isinstance(entry["type"], dict) else {}
    row = {spec.get("field_instruction") or "instruction": text, spec.get("field_output") or "output": ""}
    if input_text:
        row[spec.get("field_input") or "input"] = input_text.strip()
    return list(formatter_for(entry, 0, values, tokenizer)(row)[0][0])


def _chat_ids(text: str, entry: dict, values: dict, tokenizer) -> list[int]:
    """One user turn and the generation prompt in the template training used (chat.resolve_chat_template: the
    dataset's, then the config's), tokenized as training did: without special tokens (the template writes
    them; orpo/simpo put BOS in front when missing), but with them for dpo/ipo/kto, as TRL does."""
    from ds_tp.data.chat import resolve_chat_template
    from ds_tp.data.preference import CPO_STYLE

    template = resolve_chat_template(tokenizer, entry.get("chat_template") or values.get("chat_template"),
                                     entry.get("chat_template_jinja") or values.get("chat_template_jinja"),
                                     key="datasets[0].chat_template" if entry else "chat_template")
    try:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], chat_template=template,
                                                 add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja raise_exception(...) in the template
        raise UserError(Problem(f"the chat template refused it: {str(exc).strip()[:200]}", where="prompt")) from None
    rl = values.get("rl")
    ids = list(tokenizer(rendered, add_special_tokens=rl in ("dpo", "ipo", "kto"))["input_ids"])
    bos = tokenizer.bos_token_id
    return [bos, *ids] if rl in CPO_STYLE and bos is not None and ids[:1] != [bos] else ids


def stop_ids(model, tokenizer, values: dict) -> list[int]:
    """Where an answer ends: the tokenizer's EOS, the model's own EOS ids (generation_config.json: Llama 3 lists
    several) and the config's eot_tokens. Axolotl stops at the tokenizer's EOS alone."""
    listed = getattr(model.generation_config, "eos_token_id", None)
    eot = [tokenizer.encode(token, add_special_tokens=False) for token in values.get("eot_tokens") or []]
    ids = {tokenizer.eos_token_id, *(listed if isinstance(listed, list) else [listed]),
           *(encoded[0] for encoded in eot if len(encoded) == 1)}
    return sorted(i for i in ids if i is not None)


def generate(model, tokenizer, ids: list[int], stops: list[int], max_new_tokens: int, temperature: float | None) -> str:
    """The answer to prompt `ids`, decoded without special tokens; greedy is the argmax at every step."""
    import torch
    from transformers import GenerationConfig

    sampling = {"do_sample": True, "temperature": temperature, **AXOLOTL_SAMPLING} if temperature else {
        "do_sample": False}
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, **sampling)
    inputs = torch.tensor([ids], device=next(model.parameters()).device)
    with torch.no_grad():
        output = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), generation_config=config)
    return tokenizer.decode(output[0, len(ids):].tolist(), skip_special_tokens=True)
