"""A dataset entry's `type` -> the formatter that turns its rows into tokens. Checked once per
entry, before any file is read, so a wrong type is reported without tokenizing anything."""
from __future__ import annotations

import sys

from ds_tp.data.chat import TRAIN_ON_EOS, chat_formatter, eot_token_ids, resolve_chat_template, role_map
from ds_tp.data.prompts import (
    Formatter,
    alpaca_formatter,
    check_user_defined,
    completion_formatter,
    user_defined_formatter,
)
from ds_tp.errors import Problem, UserError
from ds_tp.translators.dataset_types import resolve_dataset_type

KNOWN_TYPES = ("alpaca", "completion", "chat_template")


def formatter_for(entry: dict, index: int, cfg: dict, tokenizer) -> Formatter:
    key = f"datasets[{index}]"
    kind = entry.get("type")
    train_on_inputs = bool(cfg.get("train_on_inputs"))
    max_length = int(cfg.get("sequence_len") or 2048)  # Axolotl cuts each prompt half there
    if isinstance(kind, dict):
        problems = [Problem(message, key=f"{key}.type.{field}") for field, message in check_user_defined(kind)]
        if problems:
            raise UserError(problems)
        return user_defined_formatter(tokenizer, kind, train_on_inputs=train_on_inputs, max_length=max_length)
    if isinstance(kind, str):
        implemented, why = resolve_dataset_type(kind)
        if implemented is None:
            raise UserError(Problem(why, key=f"{key}.type"))
        kind = implemented
    if kind == "alpaca":
        return alpaca_formatter(tokenizer, train_on_inputs=train_on_inputs, max_length=max_length)
    if kind == "completion":
        return completion_formatter(tokenizer, field=entry.get("field") or "text",
                                    sequence_len=int(cfg.get("sequence_len") or 512))
    if kind == "chat_template":
        return chat_template_formatter(entry, key, cfg, tokenizer)
    hint = "one of: " + ", ".join(KNOWN_TYPES) + ", or a mapping (a user-defined instruction format)"
    if isinstance(kind, str) and kind.startswith("sharegpt"):
        hint = "sharegpt types were removed from Axolotl: use type: chat_template"
    shown = "missing" if kind is None else f"unknown dataset type {kind!r}"
    raise UserError(Problem(shown, key=f"{key}.type", hint=hint))


def chat_template_formatter(entry: dict, key: str, cfg: dict, tokenizer) -> Formatter:
    template = resolve_chat_template(tokenizer, entry.get("chat_template") or cfg.get("chat_template"),
                                     entry.get("chat_template_jinja") or cfg.get("chat_template_jinja"),
                                     key=f"{key}.chat_template")
    train_on_eos = entry.get("train_on_eos") or "turn"
    train_on_eot = entry.get("train_on_eot") or train_on_eos
    for name, value in (("train_on_eos", train_on_eos), ("train_on_eot", train_on_eot)):
        if value not in TRAIN_ON_EOS:
            raise UserError(Problem(f"unknown {name} {value!r}", key=f"{key}.{name}",
                                    hint="one of: " + ", ".join(TRAIN_ON_EOS)))
    roles = entry.get("roles_to_train")
    roles = ["assistant"] if roles is None else roles
    if not roles or not all(isinstance(role, str) for role in roles):
        raise UserError(Problem("expected a non-empty list of role names", key=f"{key}.roles_to_train"))
    eot_ids, warnings = eot_token_ids(tokenizer, template, cfg.get("eot_tokens"), train_on_eos, train_on_eot)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    return chat_formatter(tokenizer, template=template, field_messages=entry.get("field_messages") or "messages",
                          roles_to_train=list(roles), train_on_eos=train_on_eos, train_on_eot=train_on_eot,
                          eot_ids=eot_ids, train_on_inputs=bool(cfg.get("train_on_inputs")),
                          property_names=entry.get("message_property_mappings"),
                          role_map=role_map(entry.get("roles"), f"{key}.roles"),
                          drop_system_message=bool(entry.get("drop_system_message")))
