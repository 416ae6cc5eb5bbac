"""The model's config.json through transformers, in one place: one AutoConfig call (with the config's
trust_remote_code and overrides_of_model_config), and the ModelShape every other module reads from it;
the tokenizer with the config's special_tokens and tokens."""
from __future__ import annotations

from pathlib import Path

from ds_tp.errors import Problem, UserError
from ds_tp.translators.model_shape import REQUIRED, ModelShape


def load_model_config(model_path: str, cfg: dict, *, where: str = ""):
    """transformers' PretrainedConfig of the model, or one line naming base_model."""
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=bool(cfg.get("trust_remote_code")))
    except (OSError, ValueError) as exc:
        raise UserError(Problem(f"cannot load the model config of {model_path!r}: {str(exc).splitlines()[0]}",
                                where=where, key="base_model")) from None
    for key, value in (cfg.get("overrides_of_model_config") or {}).items():
        setattr(config, key, value)  # as Axolotl: set on the loaded config, which from_pretrained then uses
    return config


def shape_of(hf_config, source: str = "model config") -> ModelShape:
    """ModelShape of a PretrainedConfig: its language model's config, read through its attribute
    names (attribute_map aliases such as n_embd -> hidden_size included)."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    values = text.to_dict()
    for key in (*REQUIRED, "num_key_value_heads", "head_dim", "tie_word_embeddings", "attention_bias"):
        if getattr(text, key, None) is not None:
            values[key] = getattr(text, key)
    if getattr(hf_config, "tie_word_embeddings", None) is not None:  # kept on the wrapper by some families
        values["tie_word_embeddings"] = hf_config.tie_word_embeddings
    return ModelShape.from_config(values, source)


def parameter_names(hf_config, cfg: dict) -> list[str]:
    """The model's parameter names, from a model built on the meta device (no memory, no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=bool(cfg.get("trust_remote_code")))
    return [name for name, _ in model.named_parameters()]


def resolve_model_path(base_model: str, config_dir: Path) -> str:
    """A local folder, a builtin asset (built on first use), or a hub name left to transformers' cache."""
    if base_model.startswith("builtin:"):
        from ds_tp.assets import resolve_builtin_model
        return str(resolve_builtin_model(base_model))
    for candidate in (Path(base_model), config_dir / base_model):
        if candidate.is_dir():
            return str(candidate.resolve())
    if base_model.startswith((".", "/", "~")):
        raise UserError(Problem(f"no such model folder {base_model!r}", key="base_model"))
    return base_model


def load_tokenizer(model_path: str, cfg: dict):
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(cfg.get("tokenizer_config") or model_path,
                                            trust_remote_code=bool(cfg.get("trust_remote_code")))
    except (OSError, ValueError) as exc:
        raise UserError(Problem(f"cannot load the tokenizer of {model_path!r}: {str(exc).splitlines()[0]}",
                                key="base_model", hint="a local folder, or a hub name already in the HF cache"))
    from tokenizers import AddedToken
    special = dict(cfg.get("special_tokens") or {})
    additional = special.pop("additional_special_tokens", None)
    for name, value in special.items():
        if value is not None:
            tok.add_special_tokens({name: value})
    if cfg.get("tokens"):  # as Axolotl: after the special tokens, before additional_special_tokens
        tok.add_tokens([AddedToken(t, rstrip=False, lstrip=False, normalized=False) for t in cfg["tokens"]])
    if additional:
        tok.add_special_tokens({"additional_special_tokens": list(additional)})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # as Axolotl: causal LMs often ship without a pad token
    return tok


def model_class(hf_config):
    """The causal-LM class transformers builds for this config (None for remote code it does not map)."""
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM._model_mapping.get(type(hf_config), None)


def choose_attention(hf_config, cfg: dict, cp: int, accelerator: str) -> tuple[str, str | None]:
    """(the attention implementation the ranks load, a notice or None), decided once before launch: the
    configured one (attn_implementation, or Axolotl's flash_attention / sdp_attention / eager_attention),
    else sdpa, else what the model class supports; flash attention only on CUDA. A model class that does
    not support the wanted one, or context parallelism (Ulysses needs sdpa, flash or flex attention) on a
    model that only has eager attention, is refused at its key."""
    cls = model_class(hf_config)
    supports = {"eager": True, "sdpa": bool(getattr(cls, "_supports_sdpa", True)),
                "flash_attention_2": bool(getattr(cls, "_supports_flash_attn", True)),
                "flash_attention_3": bool(getattr(cls, "_supports_flash_attn", True)),
                "flex_attention": bool(getattr(cls, "_supports_flex_attn", True))}
    name = cls.__name__ if cls is not None else type(hf_config).__name__
    usable = [k for k, ok in supports.items() if ok and (accelerator == "cuda" or not k.startswith("flash"))]
    wanted = cfg.get("attn_implementation")
    note = None
    if wanted and wanted.startswith("flash") and accelerator != "cuda":
        note, wanted = f"attn_implementation {wanted} needs a GPU: sdpa on this {accelerator} run", "sdpa"
    if wanted and not supports.get(wanted, True):
        raise UserError(Problem(f"{name} does not support {wanted} attention", key="attn_implementation",
                                hint="it supports: " + ", ".join(usable)))
    chosen = wanted or next(k for k in ("sdpa", "flash_attention_2", "eager") if k in usable)
    if not wanted and chosen != "sdpa":
        note = f"{name} does not support sdpa attention: {chosen} (it supports {', '.join(usable)})"
    if cp > 1 and chosen == "eager":
        raise UserError(Problem(f"context parallelism (Ulysses) needs sdpa, flash or flex attention, and {name} runs "
                                f"{chosen} here (it supports {', '.join(usable)})", key="context_parallel_size",
                                hint="on GPUs set attn_implementation: flash_attention_2, or use dp_shard/tp"))
    return chosen, note


def planning_shape_source(cfg, preset: str | None = None) -> tuple[dict, str]:
    """(config.json-like dict, where it came from) for plan and doctor. Never asks the hub: hub ids map to
    presets (translators/memory.py: PRESETS)."""
    import json

    from ds_tp.translators.memory import HUB_PRESETS, PRESETS

    known = "known: " + ", ".join(PRESETS)
    if preset:
        if preset not in PRESETS:
            raise UserError(f"--model-shape: unknown preset {preset!r} ({known})")
        return PRESETS[preset], f"preset {preset}"
    base = cfg.values["base_model"]
    if base.startswith("builtin:"):
        from ds_tp.assets import resolve_builtin_model
        folder = resolve_builtin_model(base)
    else:
        folder = next((p for p in (Path(base), cfg.source.parent / base) if (p / "config.json").is_file()), None)
    if folder is None:
        if base.lower() in HUB_PRESETS:
            return PRESETS[HUB_PRESETS[base.lower()]], f"preset {HUB_PRESETS[base.lower()]} for {base}"
        raise UserError(f"{cfg.where(('base_model',))}: base_model: {base!r} is neither a local folder with "
                        f"config.json nor a known hub model, and plan never downloads (pass --model-shape; {known})")
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")), str(folder / "config.json")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{folder / 'config.json'}: cannot read the model's shape ({exc})") from None


def tp_plan_problem(hf_config, shape: ModelShape) -> str | None:
    """Why DeepSpeed's AutoTP cannot follow this model's HuggingFace tp_plan (a style it does not implement)
    when ds-tp has no rule of its own for the family (translators/family_rules.py), or None."""
    from ds_tp.translators.family_rules import partition_config
    if partition_config(shape) is not None:
        return None
    from deepspeed.module_inject.tp_plan_converter import SUPPORTED_STYLES

    cls = model_class(hf_config)
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    plan = {**(getattr(text, "base_model_tp_plan", None) or {}), **(getattr(cls, "_tp_plan", None) or {})}
    odd = sorted({style for style in plan.values() if str(style).lower() not in SUPPORTED_STYLES})
    if not odd:
        return None
    return (f"{shape.model_type or type(hf_config).__name__}'s tensor-parallel plan uses {', '.join(odd)}, which "
            "DeepSpeed's AutoTP does not implement, and ds-tp has no rule of its own for this family")
