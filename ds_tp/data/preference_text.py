"""Row -> the strings of Axolotl 0.21's rl dataset types: {prompt, chosen, rejected} (dpo, ipo, simpo, orpo)
or {prompt, completion, label} (kto). preference.py tokenizes them as TRL does.

The strings are Axolotl's, character for character; where Axolotl would render a wrong value (a null
as "None", a number as its text) or fail on the whole dataset, ds-tp refuses the row with BadRow, naming
its field. Config keys are checked once, when the text step is built (UserError at datasets[i]...).

Axolotl 0.21 itself drops a dataset's `roles`, `message_property_mappings` and `chat_template` under
rl: dpo/ipo/simpo (its config turns each entry into a DPODataset, which has no such keys) and ORPO's
chat_template.argilla reads only the top-level chat_template; ds-tp applies them as written.
"""
from __future__ import annotations

from typing import Any, Callable

from ds_tp.data.chat import role_map
from ds_tp.data.preference_chat import (
    DEFAULT_ROLES,
    chat_renderer,
    chat_template_step,
    content_at,
    conversation_cell,
    message_text,
    orpo_argilla_step,
    string_cell,
)
from ds_tp.data.prompts import BadRow, text_field
from ds_tp.errors import Problem, UserError
from ds_tp.translators.dataset_types import preference_group, resolve_preference_type

Texts = dict[str, Any]  # {"prompt", "chosen", "rejected"} strings, or {"prompt", "completion", "label": bool}
TextStep = Callable[[dict], Texts]

# chatml and llama3 as Axolotl's chatml.* / llama3.* strategies write them: a turn's opening (with its
# role), the end-of-turn marker that also closes each completion, and what follows it between turns.
MARKUP = {
    "chatml": ("<|im_start|>{role}\n", "<|im_end|>", "\n"),
    "llama3": ("<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>", ""),
}
# variant -> (where the user turn comes from, where each completion comes from, whether `system` is read).
# A source is a column, ("chosen", 1): the content of that message of a conversation column, or "default":
# the first of prompt/input/question/instruction (chosen or chosen_response, ...) the rows have.
PAIRED_VARIANTS = {
    "default": ("default", "default", True),
    "argilla_chat": (("chosen", 0), 1, False),
    "icr": ("input", None, True),
    "intel": ("question", None, True),
    "prompt_pairs": ("prompt", None, True),
    "ultra": ("prompt", 1, True),
}
KTO_VARIANTS = {
    "argilla": ("instruction", True),
    "argilla_chat": (None, False),  # the prompt is the conversation before the completion's last message
    "intel": ("question", True),
    "prompt_pairs": ("prompt", True),
    "ultra": ("prompt", True),
}
USER_DEFINED_KEYS = {
    "paired": {"field_system": "system", "field_prompt": "prompt", "field_chosen": "chosen",
               "field_rejected": "rejected", "prompt_format": "{prompt}", "chosen_format": "{chosen}",
               "rejected_format": "{rejected}"},
    "kto": {"field_system": "system", "field_prompt": "prompt", "field_completion": "completion",
            "field_label": "label", "prompt_format": "{prompt}", "completion_format": "{completion}"},
}
FORMAT_NAMES = {"prompt_format": {"prompt", "system"}, "chosen_format": {"chosen"}, "rejected_format": {"rejected"},
                "completion_format": {"completion"}}


def preference_texts(entry: dict, index: int, cfg: dict, tokenizer) -> TextStep:
    """The text step of datasets[index] under cfg["rl"]: row -> its strings (BadRow for a bad row)."""
    key = f"datasets[{index}]"
    rl = cfg.get("rl")
    group = preference_group(rl) if isinstance(rl, str) else None
    if group is None:
        raise UserError(Problem(f"{rl!r} is not a preference method", key="rl", hint="dpo, ipo, simpo, orpo or kto"))
    kind = entry.get("type")
    name, why = resolve_preference_type(kind, rl)
    if name is None:
        raise UserError(Problem(why, key=f"{key}.type"))
    step = build_step(name, group, entry, key, cfg, tokenizer)

    def texts(row: dict) -> Texts:
        out = step(row)
        for field in ("prompt", "chosen", "rejected", "completion"):
            if field in out and not out[field]:  # Axolotl's length filter stops the whole dataset on these
                raise BadRow(out.get(f"_{field}_from", field), "empty")
        return {k: v for k, v in out.items() if not k.startswith("_")}

    return texts


def build_step(name: str, group: str, entry: dict, key: str, cfg: dict, tokenizer) -> Callable[[dict], dict]:
    family, _, variant = name.partition(".")
    if family in MARKUP:
        return markup_step(family, variant, group)
    if name == "passthrough":
        return kto_passthrough if group == "kto" else paired_passthrough
    if name == "user_defined.default":
        return user_defined_step(entry["type"], group, key)
    if name == "zephyr.nectar":
        return nectar
    render = chat_renderer(tokenizer, entry, key, cfg)
    if name == "chat_template.argilla":
        return orpo_argilla_step(render)
    fields = {f: _string_key(entry, f, default, key) for f, default in
              (("field_messages", "messages"), ("field_chosen", "chosen"), ("field_rejected", "rejected"))}
    properties = entry.get("message_property_mappings") or {"role": "role", "content": "content"}
    if not isinstance(properties, dict) or not all(isinstance(v, str) for v in properties.values()):
        raise UserError(Problem("expected a mapping of message property to the row's key",
                                key=f"{key}.message_property_mappings", hint="e.g. {role: from, content: value}"))
    roles = role_map(entry.get("roles"), f"{key}.roles") or DEFAULT_ROLES
    return chat_template_step(render, variant, roles=roles, properties=properties, **fields)


def _string_key(entry: dict, name: str, default: str, key: str) -> str:
    value = entry.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        raise UserError(Problem("expected a column name", key=f"{key}.{name}"))
    return value


# ---- chatml.* / llama3.* -------------------------------------------------------------------------------


def markup_step(family: str, variant: str, group: str) -> Callable[[dict], dict]:
    opening, end, between = MARKUP[family]

    def turn(role: str, content: str) -> str:
        return opening.format(role=role) + content + end + between

    def prompt(row: dict, user: str, with_system: bool) -> str:
        system = row.get("system") if with_system else None
        head = turn("system", string_cell(system, "system")) if system else ""
        return head + turn("user", user) + opening.format(role="assistant")

    if group == "kto":
        source, with_system = KTO_VARIANTS[variant]

        def kto_row(row: dict) -> dict:
            if source is None:  # argilla_chat: the conversation's last message is the completion
                messages = conversation_cell(row, "completion")
                history = "".join(turn(message_text(m, "role", f"completion[{i}]"),
                                       message_text(m, "content", f"completion[{i}]"))
                                  for i, m in enumerate(messages[:-1]))
                text = history + opening.format(role="assistant")
                completion = message_text(messages[-1], "content", f"completion[{len(messages) - 1}]")
            else:
                text = prompt(row, text_field(row, source), with_system)
                completion = text_field(row, "completion")
            return {"prompt": text, "completion": completion + end, "label": kto_label(row, "label")}

        return kto_row

    user_source, answer_source, with_system = PAIRED_VARIANTS[variant]

    def paired_row(row: dict) -> dict:
        if user_source == "default":
            column = next((c for c in ("prompt", "input", "question") if c in row), "instruction")
            user = text_field(row, column)
        elif isinstance(user_source, tuple):
            user = content_at(row, *user_source)
        else:
            user = text_field(row, user_source)
        out = {"prompt": prompt(row, user, with_system)}
        for side in ("chosen", "rejected"):
            if answer_source == "default":
                column = side if side in row else f"{side}_response"
                text, where = text_field(row, column), column
            elif isinstance(answer_source, int):
                text, where = content_at(row, side, answer_source), f"{side}[{answer_source}].content"
            else:
                text, where = text_field(row, side), side
            out[side], out[f"_{side}_from"] = text + end, where
        return out

    return paired_row


# ---- user_defined, passthrough, zephyr.nectar -------------------------------------------------------------


def user_defined_step(spec: dict, group: str, key: str) -> Callable[[dict], dict]:
    """Axolotl's mapping type: field_* name the row's columns, *_format place them ({prompt}, {system},
    {chosen}, {rejected}, {completion}); a format left empty is the bare value."""
    allowed = USER_DEFINED_KEYS["kto" if group == "kto" else "paired"]
    problems = [Problem(f"not a key of rl's user-defined type (keys: {', '.join(allowed)})", key=f"{key}.type.{k}")
                for k in spec if k not in allowed]
    settings = {}
    for name, default in allowed.items():
        value = spec.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(Problem(f"expected a string, got {type(value).__name__}", key=f"{key}.type.{name}"))
            continue
        settings[name] = value or default
        if name in FORMAT_NAMES and value:
            try:
                value.format(**{n: "" for n in FORMAT_NAMES[name]})
            except (KeyError, IndexError, ValueError) as exc:
                names = ", ".join("{" + n + "}" for n in sorted(FORMAT_NAMES[name]))
                problems.append(Problem(f"bad placeholder {exc} in {value!r} (placeholders: {names})",
                                        key=f"{key}.type.{name}"))
    if problems:
        raise UserError(problems)
    prompt_format, system_field = settings["prompt_format"], settings["field_system"]
    uses_system = "{system}" in prompt_format

    def prompt(row: dict) -> str:
        text = text_field(row, settings["field_prompt"])
        system = row.get(system_field)
        if system is not None and not isinstance(system, str):
            raise BadRow(system_field, f"expected a string, got {type(system).__name__}")
        if not uses_system:
            return _format(prompt_format, settings["field_prompt"], prompt=text)
        if group == "kto" and not system:  # Axolotl's kto formats without system then, which fails on {system}
            raise BadRow(system_field, "missing (prompt_format uses {system})")
        return _format(prompt_format, settings["field_prompt"], prompt=text, system=system or "")

    def step(row: dict) -> dict:
        out = {"prompt": prompt(row), "_prompt_from": settings["field_prompt"]}
        sides = ("completion",) if group == "kto" else ("chosen", "rejected")
        for side in sides:
            field = settings[f"field_{side}"]
            out[side] = _format(settings[f"{side}_format"], field, **{side: text_field(row, field)})
            out[f"_{side}_from"] = field
        if group == "kto":
            out["label"] = kto_label(row, settings["field_label"])
        return out

    return step


def paired_passthrough(row: dict) -> dict:
    return {side: text_field(row, side) for side in ("prompt", "chosen", "rejected")}


def kto_passthrough(row: dict) -> dict:
    return {"prompt": text_field(row, "prompt"), "completion": text_field(row, "completion"),
            "label": kto_label(row, "label")}


def nectar(row: dict) -> dict:
    """zephyr.nectar: the zephyr prompt; chosen is the answer of the highest rank, rejected the next."""
    answers = row.get("answers")
    if not isinstance(answers, list) or len(answers) < 2:
        raise BadRow("answers", "expected a list of at least two {answer, rank}")
    for i, answer in enumerate(answers):
        if not isinstance(answer, dict) or not isinstance(answer.get("rank"), (int, float)) \
                or isinstance(answer.get("rank"), bool):
            raise BadRow(f"answers[{i}].rank", "expected a number")
        string_cell(answer.get("answer"), f"answers[{i}].answer")
    ranked = sorted(answers, key=lambda a: a["rank"])
    prompt = f"<|system|>\n</s>\n<|user|>\n{text_field(row, 'prompt')}</s>\n<|assistant|>\n"
    return {"prompt": prompt, "chosen": ranked[-1]["answer"], "rejected": ranked[-2]["answer"],
            "_chosen_from": "answers", "_rejected_from": "answers"}


# ---- helpers ---------------------------------------------------------------------------------------------


def kto_label(row: dict, field: str) -> bool:
    """KTO's label: true (desirable) or false; 0 and 1 read as false and true."""
    value = row.get(field)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BadRow(field, "missing" if value is None else f"expected true or false, got {value!r}")


def _format(template: str, field: str, **values: str) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:  # checked at load; a value-dependent spec can still fail
        raise BadRow(field, f"cannot be placed in {template!r}: {exc}")
