"""Axolotl 0.21's rl types that render with a chat template: dpo chat_template.default and
chat_template.argilla_chat, orpo chat_template.argilla (row -> strings; preference_text.py dispatches),
and the cell readers the rl types share: a bad cell is a BadRow naming where it is in the row."""
from __future__ import annotations

from typing import Any, Callable

from ds_tp.data.chat import resolve_chat_template
from ds_tp.data.prompts import BadRow

DEFAULT_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "tool": "tool"}
DUMMY_USER = {"role": "user", "content": "[[dummy_message]]"}  # Axolotl renders each completion after it


def chat_renderer(tokenizer, entry: dict, key: str, cfg: dict) -> Callable[..., str]:
    template = resolve_chat_template(tokenizer, entry.get("chat_template") or cfg.get("chat_template"),
                                     entry.get("chat_template_jinja") or cfg.get("chat_template_jinja"),
                                     key=f"{key}.chat_template")

    def render(messages: list[dict], generation: bool, field: str) -> str:
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=generation, chat_template=template,
                                                 tokenize=False)
        except Exception as exc:  # jinja raise_exception(...) and template bugs: the row is refused
            raise BadRow(field, f"the chat template refused this conversation: {_first_line(exc)}")

    return render


def chat_template_step(render, variant: str, *, field_messages: str, field_chosen: str, field_rejected: str,
                       roles: dict[str, str], properties: dict[str, str]) -> Callable[[dict], dict]:
    """dpo chat_template.default (the prompt from field_messages, one completion message each) and
    argilla_chat (chosen/rejected are whole conversations; the prompt is chosen's before its last message)."""
    role_key, content_key = properties.get("role", "role"), properties.get("content", "content")
    dummy_prefix: list[str] = []  # the dummy user turn with its generation prompt, rendered once

    def to_message(m: Any, where: str, *, extra: bool) -> dict:
        if not isinstance(m, dict):
            raise BadRow(where, f"expected a mapping with '{role_key}' and '{content_key}'")
        role = m.get(role_key)
        if not isinstance(role, str) or role not in roles:
            shown = ("missing" if role is None else f"expected a string, got {type(role).__name__}"
                     if not isinstance(role, str) else f"role {role!r} is not one of {sorted(roles)} (set roles: to map it)")
            raise BadRow(f"{where}.{role_key}", shown)
        message = {"role": roles[role], "content": string_cell(m.get(content_key), f"{where}.{content_key}")}
        if extra:  # further mapped properties (e.g. reasoning_content) ride along when the message has them
            message.update({t: m[s] for t, s in properties.items() if t not in ("role", "content") and s in m})
        return message

    def reply(raw: Any, field: str) -> dict:
        if isinstance(raw, str):
            return to_message({role_key: "assistant", content_key: raw}, field, extra=True)
        if isinstance(raw, dict):
            return to_message(raw, field, extra=True)
        if isinstance(raw, list) and raw:
            return to_message(raw[-1], f"{field}[{len(raw) - 1}]", extra=True)
        raise BadRow(field, "missing" if raw is None else "expected a message, a list of messages or a string")

    def completion(message: dict, field: str) -> str:
        if not dummy_prefix:
            dummy_prefix.append(render([DUMMY_USER], True, field))
        rendered = render([DUMMY_USER, message], False, field)
        if dummy_prefix[0] and rendered.startswith(dummy_prefix[0]):
            return rendered[len(dummy_prefix[0]):].rstrip()
        found = rendered.find(message["content"])  # Axolotl's fallback: from where the content shows
        if found < 0:
            raise BadRow(field, "the chat template does not show this content as written")
        return rendered[found:].rstrip()

    def step(row: dict) -> dict:
        if variant == "argilla_chat":
            chosen = conversation_cell(row, field_chosen)
            prompt_messages = [to_message(m, f"{field_chosen}[{i}]", extra=False) for i, m in enumerate(chosen[:-1])]
            answers = {"chosen": to_message(chosen[-1], f"{field_chosen}[{len(chosen) - 1}]", extra=False)}
            rejected = conversation_cell(row, field_rejected)
            answers["rejected"] = to_message(rejected[-1], f"{field_rejected}[{len(rejected) - 1}]", extra=False)
            prompt_field = field_chosen
        else:
            messages = row.get(field_messages)
            if isinstance(messages, str):
                messages = [{role_key: "user", content_key: messages}]
            if not isinstance(messages, list):
                raise BadRow(field_messages, "missing" if messages is None else "expected a list of messages")
            prompt_messages = [to_message(m, f"{field_messages}[{i}]", extra=True) for i, m in enumerate(messages)]
            answers = {"chosen": reply(row.get(field_chosen), field_chosen),
                       "rejected": reply(row.get(field_rejected), field_rejected)}
            prompt_field = field_messages
        fields = {"chosen": field_chosen, "rejected": field_rejected}
        out = {"prompt": render(prompt_messages, True, prompt_field), "_prompt_from": prompt_field}
        for side, message in answers.items():
            out[side], out[f"_{side}_from"] = completion(message, fields[side]), fields[side]
        return out

    return step


def orpo_argilla_step(render) -> Callable[[dict], dict]:
    """orpo chat_template.argilla: chosen/rejected are alternating user/assistant conversations (an even
    count); the prompt is every turn before chosen's last answer (each user turn is the row's `prompt`
    when it has one), and each completion is its conversation's rendering past the prompt's length."""

    def step(row: dict) -> dict:
        chosen = conversation_cell(row, "chosen")
        rejected = conversation_cell(row, "rejected")
        if len(chosen) % 2:
            raise BadRow("chosen", f"expected alternating user/assistant turns, an even count (got {len(chosen)})")
        head = [{"role": "system", "content": string_cell(row["system"], "system")}] if row.get("system") else []
        for turn in range(len(chosen) // 2):
            user = string_cell(row["prompt"], "prompt") if "prompt" in row else content_at(row, "chosen", 2 * turn)
            head.append({"role": "user", "content": user})
            if turn < len(chosen) // 2 - 1:
                head.append({"role": "assistant", "content": content_at(row, "chosen", 2 * turn + 1)})
        prompt = render(head, True, "chosen")
        out = {"prompt": prompt}
        for side, conversation in (("chosen", chosen), ("rejected", rejected)):
            last = len(conversation) - 1
            answer = {"role": "assistant", "content": content_at(row, side, last)}
            thinking = conversation[last].get("reasoning_content")
            if thinking is not None:
                answer["reasoning_content"] = string_cell(thinking, f"{side}[{last}].reasoning_content")
            whole = render(head + [answer], False, side)
            if not whole.startswith(prompt):  # Axolotl cuts at the prompt's length regardless
                raise BadRow(side, "the chat template renders the prompt differently once an answer follows, "
                                   "so the completion cannot be cut from it")
            out[side] = whole[len(prompt):]
        return out

    return step


# ---- cell readers ------------------------------------------------------------------------------------------


def string_cell(value: Any, field: str) -> str:
    if value is None:
        raise BadRow(field, "missing")
    if not isinstance(value, str):
        raise BadRow(field, f"expected a string, got {type(value).__name__}")
    return value


def conversation_cell(row: dict, field: str) -> list:
    value = row.get(field)
    if not isinstance(value, list) or not value:
        raise BadRow(field, "missing" if value is None else "expected a non-empty list of messages")
    return value


def content_at(row: dict, field: str, index: int) -> str:
    messages = conversation_cell(row, field)
    if index >= len(messages):
        raise BadRow(field, f"expected at least {index + 1} messages, got {len(messages)}")
    return message_text(messages[index], "content", f"{field}[{index}]")


def message_text(message: Any, name: str, where: str) -> str:
    if not isinstance(message, dict):
        raise BadRow(where, "expected a {role, content} message")
    return string_cell(message.get(name), f"{where}.{name}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
