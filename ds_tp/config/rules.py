"""Cross-field rules and normalisation, in one place. Each rule reads only keys that passed the
schema (`bad` holds the top-level keys that did not), so one mistake is reported once."""

from __future__ import annotations

import json
from pathlib import Path

from ds_tp.errors import Finding, UserError
from ds_tp.translators.adapter import ADAPTER_KEYS, resolve_adapter
from ds_tp.translators.adapter import layout_findings as adapter_layout_findings
from ds_tp.translators.dataset_types import preference_group, resolve_dataset_type, resolve_preference_type
from ds_tp.translators.long_context import resolve_long_context
from ds_tp.translators.model_shape import ModelShape
from ds_tp.translators.preference import RL_KEYS, resolve_preference
from ds_tp.translators.resolved import zero_stage
from ds_tp.translators.trainable import pattern_problems

BATCH_KEYS = ("micro_batch_size", "gradient_accumulation_steps", "batch_size")
EXCLUSIVE = [
    ("warmup_steps", "warmup_ratio"),
    ("save_steps", "saves_per_epoch"),
    ("eval_steps", "evals_per_epoch"),
    ("gradient_accumulation_steps", "batch_size"),
]


def _on(value) -> bool:
    return value not in (None, False)


CLOUD_KEYS = {
    "provider",
    "gpu",
    "gpu_count",
    "node_count",
    "secrets",
    "volumes",
    "timeout",
    "memory",
    "timeout_preprocess",
    "memory_preprocess",
    "dockerfile_commands",
    "branch",
}


def cloud_config(data: dict) -> Finding | None:
    """Axolotl's cloud config (the file `axolotl train --cloud CLOUD.yaml` takes) given as the training
    config: one line saying so instead of an unknown-key line per cloud key."""
    cloud = sorted(CLOUD_KEYS & set(data))
    if "base_model" in data or len(cloud) < 2:
        return None
    return Finding(
        (cloud[0],),
        f"this is an Axolotl cloud config ({', '.join(cloud)}), the file `axolotl train "
        "--cloud` takes, not a training config",
        "ds-tp trains where it is launched: pass the training YAML",
    )


def chat_template_names(data: dict, bad: set[str]) -> list[Finding]:
    """A chat template named by Axolotl that ds-tp does not have as data, at the key that names it."""
    from ds_tp.translators.chat_templates import NAMED_TEMPLATES

    places: list[tuple[tuple, object]] = (
        [(("chat_template",), data.get("chat_template"))] if "chat_template" not in bad else []
    )
    for index, entry in enumerate(data.get("datasets") or [] if "datasets" not in bad else []):
        if isinstance(entry, dict):
            places.append((("datasets", index, "chat_template"), entry.get("chat_template")))
    found = []
    for path, name in places:
        if not isinstance(name, str) or "{" in name:
            continue
        wanted = name.removeprefix("tokenizer_default_fallback_")
        if wanted in ("tokenizer_default", "jinja") or wanted in NAMED_TEMPLATES:
            continue
        found.append(
            Finding(
                path,
                f"Axolotl's template {wanted!r} is not one ds-tp has yet",
                "ds-tp has " + ", ".join(NAMED_TEMPLATES) + "; or use tokenizer_default (the model's "
                "own template) or jinja with chat_template_jinja",
            )
        )
    return found


def normalise(data: dict, bad: set[str], defaults: dict) -> list[Finding]:
    """Fill defaults (announcing the ones Axolotl would demand), derive batch keys, coerce strings."""
    found: list[Finding] = []
    for key, (value, announce) in defaults.items():
        if key in data or key in BATCH_KEYS:
            continue
        data[key] = value
        if announce:
            found.append(
                Finding(
                    (key,),
                    f"not set: using {value}",
                    "Axolotl requires it; ds-tp uses the documented default",
                    level="notice",
                )
            )
    if "learning_rate" not in bad and isinstance(data.get("learning_rate"), str):
        data["learning_rate"] = float(data["learning_rate"])
    found += _batch_keys(data, bad, defaults)
    found += _attention(data, bad)
    return found


def _batch_keys(data: dict, bad: set[str], defaults: dict) -> list[Finding]:
    if bad & set(BATCH_KEYS):
        return []
    given = [k for k in BATCH_KEYS if data.get(k) is not None]
    found: list[Finding] = []
    if "gradient_accumulation_steps" in given and "batch_size" in given:
        return []  # reported by the exclusive-keys rule
    micro = data.get("micro_batch_size")
    if "batch_size" in given:
        if micro is None:
            micro = defaults.get("micro_batch_size", (1, True))[0]
            data["micro_batch_size"] = micro
            found.append(Finding(("micro_batch_size",), f"not set: using {micro}", level="notice"))
        if data["batch_size"] % micro:
            found.append(
                Finding(
                    ("batch_size",),
                    f"batch_size {data['batch_size']} is not a multiple of micro_batch_size {micro}",
                    "batch_size = micro_batch_size x gradient_accumulation_steps per data-parallel rank",
                )
            )
            return found
        data["gradient_accumulation_steps"] = data["batch_size"] // micro
        return found
    for key in ("micro_batch_size", "gradient_accumulation_steps"):
        if data.get(key) is None:
            value = defaults.get(key, (1, True))[0]
            data[key] = value
            found.append(
                Finding(
                    (key,),
                    f"not set: using {value}",
                    "Axolotl wants two of micro_batch_size, gradient_accumulation_steps, batch_size",
                    level="notice",
                )
            )
    data["batch_size"] = data["micro_batch_size"] * data["gradient_accumulation_steps"]
    return found


# Axolotl's attn_implementation values -> what ds-tp runs. Exact attention kernels compute the same values,
# so they map onto the ones transformers and DeepSpeed's Ulysses take (flash on CUDA when installed, else sdpa).
ATTENTION = {
    "eager": "eager",
    "sdpa": "sdpa",
    "flash_attention_2": "flash_attention_2",
    "flash_attention_3": "flash_attention_3",
    "flex_attention": "flex_attention",
    "flash_attention_4": "flash_attention_2",
    "flash_attention_torch": "sdpa",
    "xformers": "sdpa",
}
APPROXIMATE_ATTENTION = {
    "sage": "SageAttention quantizes attention",
    "fp8": "fp8 attention computes other values",
    "varlen": "Axolotl's varlen is for diffusion language models only",
}
LEGACY_ATTENTION = {
    "flash_attention": "flash_attention_2",
    "sdp_attention": "sdpa",
    "flex_attention": "flex_attention",
    "eager_attention": "eager",
}


def _attention(data: dict, bad: set[str]) -> list[Finding]:
    on = [k for k in LEGACY_ATTENTION if data.get(k) is True and k not in bad]
    if on and data.get("attn_implementation"):
        return [
            Finding(
                (on[0],),
                f"conflicts with attn_implementation: {data['attn_implementation']}",
                "use only attn_implementation",
            )
        ]
    if len(on) > 1:
        return [Finding((on[1],), f"conflicts with {on[0]}", "choose one attention implementation")]
    if on:
        data["attn_implementation"] = LEGACY_ATTENTION[on[0]]
        return []
    wanted = data.get("attn_implementation")
    if not isinstance(wanted, str) or "attn_implementation" in bad or wanted in ATTENTION.values():
        return []
    if wanted in APPROXIMATE_ATTENTION:
        return [
            Finding(
                ("attn_implementation",),
                f"{wanted!r}: {APPROXIMATE_ATTENTION[wanted]}, which ds-tp does not implement",
                "use sdpa or flash_attention_2",
            )
        ]
    runs = ATTENTION.get(wanted) or ("flash_attention_2" if "/" in wanted or "flash" in wanted else None)
    if runs is None:
        known = sorted(ATTENTION) + ["a hub kernel path (org/name)"]
        return [
            Finding(
                ("attn_implementation",),
                f"{wanted!r} is not an attention implementation ds-tp knows",
                "one of: " + ", ".join(known),
            )
        ]
    data["attn_implementation"] = runs
    return [
        Finding(
            ("attn_implementation",), f"{wanted!r}: exact attention, run as {runs} (the same values)", level="notice"
        )
    ]


def exclusive(data: dict, bad: set[str]) -> list[Finding]:
    """Pairs of keys that exclude each other, as the user wrote them (before defaults are filled)."""
    found: list[Finding] = []
    for a, b in EXCLUSIVE:
        if _on(data.get(a)) and _on(data.get(b)) and not {a, b} & bad:
            found.append(Finding((b,), f"cannot be used together with {a}", f"keep one of {a} and {b}"))
    return found


def dataset_types(data: dict, bad: set[str]) -> list[Finding]:
    """Each dataset's type as Axolotl names it: implemented, or refused at its line with the reason."""
    found: list[Finding] = []
    rl = data.get("rl") if "rl" not in bad else None
    if rl and preference_group(rl) is None:
        return found  # an rl: ds-tp refuses (grpo, ...): its own line says why
    for key in ("datasets", "test_datasets"):
        entries = data.get(key) if key not in bad else None
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            kind = entry.get("type") if isinstance(entry, dict) else None
            if rl and isinstance(entry, dict):
                implemented, why = resolve_preference_type(kind, rl)
            elif isinstance(kind, str):
                implemented, why = resolve_dataset_type(kind)
            else:
                continue
            if implemented is None:
                found.append(Finding((key, index, "type"), why))
    return found


def cross_field(data: dict, bad: set[str], defaulted: set[str] | frozenset = frozenset()) -> list[Finding]:
    """defaulted: the keys normalise filled in (the file does not set them), so a rule about two keys is
    reported at the one the file sets, where its line is."""
    found: list[Finding] = dataset_types(data, bad)
    if not data.get("datasets") and "datasets" not in bad:
        found.append(
            Finding(
                (),
                "no datasets: validate and translate work, `ds-tp train` has nothing to train on",
                "add datasets: [{path: ..., type: alpaca}]",
                level="warning",
            )
        )
    if data.get("bf16") is True and data.get("fp16") is True:
        found.append(Finding(("fp16",), "cannot be used together with bf16: true", "choose one precision"))
    cp = data.get("context_parallel_size") or 1
    if not {"context_parallel_size", "sequence_len", "micro_batch_size"} & bad and isinstance(cp, int) and cp > 1:
        seq = data.get("sequence_len", 512)
        if isinstance(seq, int) and seq % cp:
            default = "sequence_len" in defaulted
            found.append(
                Finding(
                    ("context_parallel_size",) if default else ("sequence_len",),
                    f"sequence_len {seq}{' (the default)' if default else ''} is not divisible by "
                    f"context_parallel_size {cp}",
                    f"set sequence_len to a multiple of {cp}" if default else f"use a multiple of {cp}",
                )
            )
        if data.get("sample_packing") and data.get("micro_batch_size") != 1:
            found.append(
                Finding(
                    ("micro_batch_size",),
                    f"must be 1 with context_parallel_size {cp} and "
                    f"sample_packing (got {data.get('micro_batch_size')})",
                    "raise gradient_accumulation_steps instead",
                )
            )
    if data.get("val_set_size", 0) == 0 and not bad & {"eval_steps", "evals_per_epoch"}:
        for key in ("eval_steps", "evals_per_epoch", "early_stopping_patience"):
            if data.get(key) and not data.get("test_datasets"):
                found.append(Finding((key,), "has no effect without val_set_size or test_datasets", level="warning"))
    found += chat_template_names(data, bad)
    overrides = data.get("overrides_of_model_config")
    if isinstance(overrides, dict) and overrides.get("output_router_logits"):
        found.append(
            Finding(
                ("overrides_of_model_config", "output_router_logits"),
                "the MoE router's auxiliary loss is not implemented: ds-tp's loss is the token cross-entropy only",
                "remove it to train without the auxiliary loss",
            )
        )
    patterns = data.get("unfrozen_parameters")
    if isinstance(patterns, list) and "unfrozen_parameters" not in bad:
        for index, why in pattern_problems(patterns):
            found.append(Finding(("unfrozen_parameters", index), why))
    if not bad & set(ADAPTER_KEYS):
        found += resolve_adapter(data)[1]
    if not bad & {"rl", "trl", *RL_KEYS}:
        found += resolve_preference(data)[1]
    if patterns and data.get("adapter"):
        found.append(
            Finding(
                ("unfrozen_parameters",),
                "not implemented with an adapter: Axolotl matches these patterns against the adapter model's "
                "names ('base_model.model.' first), so they match nothing there and it freezes the adapters too",
                "with an adapter only the adapter trains; add whole modules with lora_modules_to_save",
            )
        )
    grace = data.get("preemption_grace_period")
    if isinstance(grace, (int, float)) and grace > 30 and "preemption_grace_period" not in bad:
        found.append(
            Finding(
                ("preemption_grace_period",),
                f"{grace} s is longer than the 30 s after which the "
                "deepspeed launcher and torchrun SIGKILL ranks they have SIGTERMed",
                "keep it under 30 s unless the ranks are signalled by a scheduler that waits longer",
                level="warning",
            )
        )
    return found


def layout_findings(data: dict, layout) -> list[Finding]:
    """Rules that need the resolved layout (dp_shard may be inferred from the world size)."""
    found = adapter_layout_findings(resolve_adapter(data)[0], layout.tp)
    return found + resolve_long_context(data, zero_stage(layout)[0] == 3, layout.tp, layout.cp, None)[1]


def model_shape_checks(data: dict, layout, config_dir: Path) -> list[Finding]:
    """Heads / kv heads / widths against tp and cp, when base_model is a local folder with config.json."""
    base = data.get("base_model")
    if not isinstance(base, str) or (layout.tp == 1 and layout.cp == 1):
        return []
    candidates = [Path(base), config_dir / base]
    if base.startswith("builtin:"):  # already built (validate never builds one: that needs torch)
        from ds_tp.assets import built_folder

        built = built_folder(base)
        candidates = [built] if built is not None else []
    path = next((p for p in candidates if (p / "config.json").is_file()), None)
    if path is None:
        return [
            Finding(
                ("base_model",),
                "not a local folder: head and width checks against tp/cp happen at train time",
                level="notice",
            )
        ]
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        widths = {"num_hidden_layers": 1, "vocab_size": 1, **cfg}  # only the widths decide tp/cp
        return shape_findings(ModelShape.from_config(widths, str(path / "config.json")), layout)
    except (OSError, ValueError) as exc:
        return [Finding(("base_model",), f"cannot read {path / 'config.json'}: {exc}")]
    except UserError as exc:
        return [Finding(("base_model",), str(exc))]


def shape_findings(shape: ModelShape, layout) -> list[Finding]:
    """The model's dimensions against tp and cp (ModelShape.layout_problems), at the layout key at fault."""
    hints = {"tensor_parallel_size": "choose a tp that divides it", "context_parallel_size": ""}
    found = [
        Finding((key,), why, hints[key] if "divisible" in why else "use dp_shard_size or context_parallel_size")
        for key, why in shape.layout_problems(layout.tp, layout.cp)
    ]
    if shape.experts and layout.tp > 1 and not found:
        found.append(
            Finding(
                ("tensor_parallel_size",),
                f"the {shape.experts} MoE experts of each layer stay whole on every TP rank (AutoTP splits "
                "attention and dense MLPs); dp_shard_size (ZeRO-3) shards them",
                level="notice",
            )
        )
    return found
