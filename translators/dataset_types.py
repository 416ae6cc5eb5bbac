"""Axolotl's dataset `type` names -> the formatter ds-tp runs, or why ds-tp refuses the type.

Pure (validate uses it before any file is read). Implemented: alpaca, completion, chat_template (and
chat_template.default, Axolotl's name for the same strategy's default loader) and user-defined
mappings. Every other name Axolotl ships is refused with the reason, naming what is supported.
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
    "bradley_terry.",
    "dpo.",
    "orpo.",
    "kto.",
    "user_defined.",
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
    if kind.startswith(PREFERENCE_PREFIXES) or kind.split(".")[0] in ("dpo", "orpo", "kto", "bradley_terry"):
        return None, (
            f"{kind!r} is a preference-training type (rl:), which ds-tp does not implement yet; supported: {SUPPORTED}"
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
