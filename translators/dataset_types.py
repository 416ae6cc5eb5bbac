"""Axolotl's dataset `type` names -> the formatter ds-tp runs, or why ds-tp refuses the type.

Pure (validate uses it before any file is read). Supervised (no rl:): alpaca, completion, chat_template
(and chat_template.default, Axolotl's name for the same strategy's default loader) and user-defined
mappings. Preference training (rl:): resolve_preference_type, with the types Axolotl 0.21 loads for
each method (dpo, ipo and simpo read prompt_strategies/dpo, orpo reads orpo, kto reads kto). Every
other name Axolotl ships is refused with the reason, naming what is supported.
"""

from __future__ import annotations

IMPLEMENTED = {
    "alpaca": "alpaca",
    "completion": "completion",
    "chat_template": "chat_template",
    "chat_template.default": "chat_template",
}
SUPPORTED = "alpaca, completion, chat_template, or a mapping (a user-defined instruction format)"
PREFERENCE_PREFIXES = (
    "chatml.",
    "llama3.",
    "chat_template.argilla",
    "chat_template.argilla_chat",
    "chat_template.icr",
    "dpo.",
    "orpo.",
    "kto.",
    "user_defined.",
    "zephyr.",
    "passthrough",
)
OTHER_STRATEGIES = {  # Axolotl prompt strategies ds-tp does not implement (yet)
    "input_output": "the input_output (template-free) format",
    "pretrain": "pretraining text",
    "stepwise_supervised": "step-wise supervised (process reward) data",
    "metharme": "the metharme format",
    "pygmalion": "the pygmalion format",
    "context_qa": "the context_qa format",
    "creative_acr": "the creative_acr format",
    "orcamini": "the orcamini format",
    "jeopardy": "the jeopardy format",
    "llama2_chat": "the llama2_chat format",
    "alpaca_chat": "the alpaca_chat format",
    "alpaca_instruct": "the alpaca_instruct format",
    "alpaca_w_system": "the alpaca_w_system format",
    "explainchoice": "the explainchoice format",
    "concisechoice": "the concisechoice format",
    "summarizetldr": "the summarizetldr format",
    "oasst": "the oasst format",
    "gpteacher": "the gpteacher format",
    "reflection": "the reflection format",
    "messages": "the messages (chat) format",
}


def resolve_dataset_type(kind: str) -> tuple[str | None, str]:
    """(the formatter ds-tp runs, '') or (None, why it is refused)."""
    if kind in IMPLEMENTED:
        return IMPLEMENTED[kind], ""
    if kind.startswith("sharegpt"):
        return None, "sharegpt types were removed from Axolotl: use type: chat_template"
    if kind.split(".")[0] == "bradley_terry":
        return None, f"{kind!r} is reward-model training data, which ds-tp does not implement; supported: {SUPPORTED}"
    if kind.startswith(PREFERENCE_PREFIXES) or kind.split(".")[0] in ("dpo", "orpo", "kto"):
        return None, (
            f"{kind!r} is a preference-training type: it needs rl: ({', '.join(PREFERENCE_RL)}); "
            f"supported without rl: {SUPPORTED}"
        )
    base, _, variant = kind.partition(":")
    if base == "alpaca" and variant:
        return (
            None,
            f"alpaca:{variant} uses another prompt than alpaca's and is not implemented; supported: {SUPPORTED}",
        )
    family = kind.split(".")[0].split(":")[0]
    if family in OTHER_STRATEGIES:
        return None, f"{OTHER_STRATEGIES[family]} ({kind!r}) is not implemented by ds-tp; supported: {SUPPORTED}"
    if "." in kind:
        return None, (
            f"{kind!r} names a prompt strategy module (Axolotl imports it as code), which ds-tp does not "
            f"load; supported: {SUPPORTED}"
        )
    return None, f"unknown dataset type {kind!r}; supported: {SUPPORTED}"


# ---- preference training (rl:) ----------------------------------------------------------------------------

PREFERENCE_RL = ("dpo", "ipo", "simpo", "orpo", "kto")
CHAT_VARIANTS_PAIRED = ("default", "argilla_chat", "icr", "intel", "prompt_pairs", "ultra")  # dpo/chatml.py, llama3.py
CHAT_VARIANTS_KTO = ("argilla", "argilla_chat", "intel", "prompt_pairs", "ultra")  # kto/chatml.py, llama3.py
# Per rl method: the types Axolotl 0.21 loads (module.function) that ds-tp implements. A dataset without a
# `type` resolves to `passthrough` for every method (its rows already hold the strings; only dpo/ipo/simpo
# also load the name); `user_defined.default` is a mapping `type`, never written as a name.
PREFERENCE_TYPES = {
    "paired": (
        "chat_template.default",
        "chat_template.argilla_chat",
        *(f"{family}.{v}" for family in ("chatml", "llama3") for v in CHAT_VARIANTS_PAIRED),
        "zephyr.nectar",
        "passthrough",
        "user_defined.default",
    ),
    "orpo": ("chat_template.argilla",),
    "kto": (*(f"{family}.{v}" for family in ("chatml", "llama3") for v in CHAT_VARIANTS_KTO), "user_defined.default"),
}
PREFERENCE_ALIASES = {
    "chat_template": "chat_template.default",
    "chatml": "chatml.default",
    "llama3": "llama3.default",
    "passthrough.default": "passthrough",
}
PREFERENCE_GROUP = {"dpo": "paired", "ipo": "paired", "simpo": "paired", "orpo": "orpo", "kto": "kto"}
# Dataset options that only Axolotl's supervised chat_template strategy reads: its rl types (dpo/, orpo/, kto/)
# never do, so under rl: they are accepted with no effect rather than refused as unimplemented options.
SUPERVISED_ONLY_OPTIONS = (
    "field_human",
    "field_model",
    "field_tools",
    "field_thinking",
    "template_thinking_key",
    "message_field_training",
    "message_field_training_detail",
    "split_thinking",
    "conversation",
    "input_format",
)
GROUP_METHODS = {"paired": "dpo, ipo and simpo", "orpo": "orpo", "kto": "kto"}


def preference_group(rl: str) -> str | None:
    """'paired' (dpo, ipo, simpo: Axolotl's dpo strategies), 'orpo' or 'kto'; None for another rl."""
    return PREFERENCE_GROUP.get(rl)


def supported_preference_types(rl: str) -> str:
    """The types rl accepts, in one line."""
    group = PREFERENCE_GROUP[rl]
    if group == "paired":
        return (
            "chat_template.default, chat_template.argilla_chat, chatml.* and llama3.* ("
            + ", ".join(CHAT_VARIANTS_PAIRED)
            + "), zephyr.nectar, passthrough or no type (rows with prompt, chosen, rejected), or a mapping "
            "(user_defined.default)"
        )
    if group == "orpo":
        return "chat_template.argilla, or no type (rows with prompt, chosen, rejected)"
    return (
        "chatml.* and llama3.* (" + ", ".join(CHAT_VARIANTS_KTO) + "), no type (rows with prompt, completion, "
        "label), or a mapping (user_defined.default)"
    )


def resolve_preference_type(kind: str | dict | None, rl: str) -> tuple[str | None, str]:
    """With rl: set, a dataset's type -> (the implemented type, '') or (None, why it is refused).

    kind is the `type` as written: a name, a mapping (Axolotl's user_defined.default) or None (no type: the
    rows already hold the strings, as Axolotl passes them through)."""
    group = PREFERENCE_GROUP.get(rl)
    if group is None:
        return (
            None,
            f"rl: {rl} has no preference dataset types in ds-tp (preference methods: {', '.join(PREFERENCE_RL)})",
        )
    supported = f"supported with rl: {rl}: {supported_preference_types(rl)}"
    if kind is None:
        return "passthrough", ""
    if isinstance(kind, dict):
        if "user_defined.default" in PREFERENCE_TYPES[group]:
            return "user_defined.default", ""
        return None, f"rl: {rl} has no user-defined (mapping) type in Axolotl; {supported}"
    if not isinstance(kind, str) or not kind:
        return None, f"expected a type name or a mapping; {supported}"
    name = PREFERENCE_ALIASES.get(kind, kind)
    if name in PREFERENCE_TYPES[group]:
        if name == "user_defined.default":
            return None, "user_defined.default is written as a mapping: type: {field_prompt: ..., field_chosen: ...}"
        return name, ""
    return None, _preference_refusal(kind, name, rl, group, supported)


def _preference_refusal(kind: str, name: str, rl: str, group: str, supported: str) -> str:
    if group == "paired" and name in ("chatml.argilla", "llama3.argilla"):
        family = name.split(".")[0]
        return (
            f"Axolotl 0.21 has no {rl} type {kind!r} (its docs name it, its loader fails): {family} "
            f"({family}.default) reads the same rows (instruction, chosen_response, rejected_response); {supported}"
        )
    others = [g for g, names in PREFERENCE_TYPES.items() if g != group and name in names]
    if others:
        methods = " and ".join(GROUP_METHODS[g] for g in others)
        return f"{kind!r} is a type for rl: {methods}, not one rl: {rl} reads; {supported}"
    implemented, _ = resolve_dataset_type(kind)
    family = kind.split(".")[0].split(":")[0]
    if implemented is not None or kind.startswith("sharegpt") or family in OTHER_STRATEGIES or family == "alpaca":
        return f"{kind!r} is a supervised (SFT) dataset type; with rl: {rl} each dataset needs a preference type; {supported}"
    if family == "bradley_terry":
        return f"{kind!r} is reward-model training (bradley_terry), which ds-tp does not implement; {supported}"
    if family in ("dpo", "orpo", "kto"):
        rest = kind.split(".", 1)[1] if "." in kind else ""
        return f"Axolotl reads rl types without the method in front (write {rest or 'the type'!r}); {supported}"
    if "." in kind:
        return (
            f"{kind!r} names a prompt strategy module (Axolotl imports it as code), which ds-tp does not "
            f"load; {supported}"
        )
    return f"unknown dataset type {kind!r} for rl: {rl}; {supported}"
