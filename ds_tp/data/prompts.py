"""Row -> tokens for the instruction formats: `alpaca`, user-defined (a mapping `type`) and `completion`.

Every formatter takes one dataset row (a dict) and returns a list of examples, each
(input_ids, labels) with labels -100 where the loss is masked. A bad row raises BadRow; the caller
adds the file and row number, so formatters never deal with where a row came from.
`chat_template` lives in chat.py.
"""
from __future__ import annotations

from typing import Any, Callable

from ds_tp.errors import Problem, UserError
from ds_tp.labels import IGNORE  # noqa: F401  (re-exported)

Example = tuple[list[int], list[int]]
Formatter = Callable[[dict], list[Example]]

# Axolotl's AlpacaPrompter, word for word (system prompt + turn format).
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class BadRow(Exception):
    """A row that cannot be formatted; `field` names the column at fault ('' when it is the row)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The exact Axolotl alpaca prompt, ending in '### Response:\\n' (the answer follows it)."""
    if input:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def text_field(row: dict, name: str, *, required: bool = True) -> str:
    """A string column of a row; a missing optional column or a null reads as ''."""
    if name not in row or row[name] is None:
        if required:
            raise BadRow(name, "missing")
        return ""
    value = row[name]
    if not isinstance(value, str):
        raise BadRow(name, f"expected a string, got {type(value).__name__} {_short(value)}")
    return value


def tokenize_prompt_and_response(tokenizer, prompt: str, response: str, *, train_on_inputs: bool,
                                 max_length: int | None = None) -> Example:
    """Axolotl's instruction tokenizing: the prompt as the tokenizer encodes it (BOS if it adds one), the
    response with EOS appended and its BOS stripped, concatenated; the prompt is masked unless
    train_on_inputs. Tokenizing the two halves apart keeps the mask boundary exact. As in Axolotl, an
    empty half adds no token at all (an empty response gets no EOS), each half is cut at max_length
    (sequence_len), and a response cut there gets no EOS (the row is then too long and is dropped)."""
    eos = eos_id(tokenizer)
    prompt_ids = _encode_half(tokenizer, prompt, eos, add_eos=False, strip_bos=False, max_length=max_length)
    response_ids = _encode_half(tokenizer, response, eos, add_eos=True, strip_bos=True, max_length=max_length)
    prompt_labels = list(prompt_ids) if train_on_inputs else [IGNORE] * len(prompt_ids)
    return prompt_ids + response_ids, prompt_labels + response_ids


def _encode_half(tokenizer, text: str, eos: int, *, add_eos: bool, strip_bos: bool,
                 max_length: int | None) -> list[int]:
    if not text:
        return []
    ids = list(tokenizer(text, truncation=max_length is not None, max_length=max_length)["input_ids"])
    if not ids:
        return []
    if add_eos and ids[-1] != eos and (max_length is None or len(ids) < max_length):
        ids.append(eos)
    if strip_bos and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    return ids


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError(Problem("the tokenizer has no EOS token", key="special_tokens",
                                hint="set special_tokens.eos_token"))
    return tokenizer.eos_token_id


def alpaca_formatter(tokenizer, *, train_on_inputs: bool, max_length: int | None = None) -> Formatter:
    def format_row(row: dict) -> list[Example]:
        instruction = text_field(row, "instruction")
        input_text = text_field(row, "input", required=False)
        output = text_field(row, "output")
        prompt = alpaca_prompt(instruction, input_text)
        return [tokenize_prompt_and_response(tokenizer, prompt, output, train_on_inputs=train_on_inputs,
                                             max_length=max_length)]

    return format_row


def user_defined_formatter(tokenizer, spec: dict, *, train_on_inputs: bool,
                           max_length: int | None = None) -> Formatter:
    """Axolotl's custom instruction format: `type: {field_instruction: ..., format: ...}`.
    A row's own system column (field_system) wins over system_prompt."""
    field_instruction = spec.get("field_instruction") or "instruction"
    field_input = spec.get("field_input") or "input"
    field_output = spec.get("field_output") or "output"
    field_system = spec.get("field_system") or "system"
    with_input = spec.get("format") or "{instruction} {input} "
    no_input = spec.get("no_input_format") or "{instruction} "
    system_format = spec.get("system_format") or "{system}"
    system_prompt = spec.get("system_prompt") or ""

    def format_row(row: dict) -> list[Example]:
        instruction = text_field(row, field_instruction)
        input_text = text_field(row, field_input, required=False)
        output = text_field(row, field_output)
        system = text_field(row, field_system, required=False) or system_prompt
        turn = (with_input if input_text else no_input).format(instruction=instruction, input=input_text)
        prompt = (system_format.format(system=system) if system else "") + turn
        return [tokenize_prompt_and_response(tokenizer, prompt, output, train_on_inputs=train_on_inputs,
                                             max_length=max_length)]

    return format_row


def check_user_defined(spec: dict) -> list[tuple[str, str]]:
    """(key, problem) for the format strings of a user-defined type, checked once before any row."""
    problems = []
    allowed = {"format": {"instruction", "input"}, "no_input_format": {"instruction", "input"},
               "system_format": {"system"}}
    for key, names in allowed.items():
        template = spec.get(key)
        if template is None:
            continue
        if not isinstance(template, str):
            problems.append((key, f"expected a string, got {type(template).__name__}"))
            continue
        try:
            template.format(**{n: "" for n in names})
        except (KeyError, IndexError, ValueError) as exc:
            problems.append((key, f"bad placeholder {exc} in {template!r} (placeholders: "
                                  + ", ".join("{" + n + "}" for n in sorted(names)) + ")"))
    return problems


def completion_formatter(tokenizer, *, field: str, sequence_len: int) -> Formatter:
    """Axolotl's completion: the whole text (BOS if the tokenizer adds one, EOS at the end of the
    document) trained on every token and cut into sequence_len pieces, so nothing is dropped."""

    def format_row(row: dict) -> list[Example]:
        ids = list(tokenizer(text_field(row, field))["input_ids"])
        eos = eos_id(tokenizer)
        if not ids or ids[-1] != eos:
            ids.append(eos)
        pieces = [ids[start:start + sequence_len] for start in range(0, len(ids), sequence_len)]
        return [(piece, list(piece)) for piece in pieces]

    return format_row


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
