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
