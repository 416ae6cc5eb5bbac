"""LoRA and QLoRA on the ranks, built with peft (and bitsandbytes for a quantized base) from the run's
Adapter (translators/adapter.py): the quantization config for from_pretrained, the peft model, and the
adapter folder that PeftModel.from_pretrained loads, gathered across ZeRO-3 partitions and TP shards.

Every rank draws the same adapter init (the run's seed is set right before get_peft_model), so every
layout starts from the weights one process would have.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from ds_tp.translators.adapter import Adapter

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def weights_dtype(run) -> torch.dtype:
    """The dtype DeepSpeed holds the module's weights in: the 4-bit base's packed bytes are stored in it
    (bnb_4bit_quant_storage), so the engine's cast leaves them intact and ZeRO-3 can partition them."""
    return DTYPES.get(run.precision.name, torch.float32)


def quantization_config(adapter: Adapter | None, run):
    """bitsandbytes' config for from_pretrained, as Axolotl builds it, or None for a full-precision base."""
    if adapter is None or adapter.quant is None:
        return None
    from transformers import BitsAndBytesConfig

    dtype = weights_dtype(run)
    if adapter.quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, **adapter.bnb_kwargs)
    options = {"load_in_4bit": True, "llm_int8_threshold": 6.0, "llm_int8_has_fp16_weight": False,
               "bnb_4bit_compute_dtype": dtype, "bnb_4bit_use_double_quant": True, "bnb_4bit_quant_type": "nf4",
               "bnb_4bit_quant_storage": dtype}
    return BitsAndBytesConfig(**{**options, **adapter.bnb_kwargs})


def lora_config(adapter: Adapter, targets: list[str] | str):
    from peft import LoraConfig, TaskType

    extra = {}
    for key, value in (("rank_pattern", adapter.rank_pattern), ("alpha_pattern", adapter.alpha_pattern),
                       ("ensure_weight_tying", adapter.ensure_weight_tying)):
        if value is not None:
            extra[key] = value
    return LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, target_modules=targets,
                      layers_to_transform=adapter.layers_to_transform, layers_pattern=adapter.layers_pattern,
                      lora_dropout=adapter.dropout, fan_in_fan_out=adapter.fan_in_fan_out,
                      modules_to_save=adapter.modules_to_save, bias="none", task_type=TaskType.CAUSAL_LM,
                      use_rslora=adapter.rslora, use_dora=adapter.dora, init_lora_weights=adapter.init_lora_weights,
                      **extra)


def linear_names(model) -> list[str]:
    """Axolotl's lora_target_linear: the last name part of every linear layer, the LM head left out."""
    import bitsandbytes as bnb

    kinds = (torch.nn.Linear, bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    names = {name.split(".")[-1] for name, module in model.named_modules()
             if name and (isinstance(module, kinds) or "Linear" in type(module).__name__)}
    head = model.get_output_embeddings()
    head_names = {name.split(".")[-1] for name, module in model.named_modules() if module is head}
    return sorted(names - head_names - {"lm_head"})


def targets_of(adapter: Adapter, model) -> list[str] | str:
    """The target_modules peft gets: the configured ones, plus every linear layer with lora_target_linear."""
    configured = adapter.target_modules or []
    if not adapter.target_linear:
        return configured
    listed = [configured] if isinstance(configured, str) else list(configured)
    return sorted(set(listed) | set(linear_names(model)))


def adapted_modules(hf_config, adapter: Adapter, cfg: dict) -> tuple[list[str] | str, list[str], int, int]:
    """On a model built on the meta device: (target_modules for peft, the adapted module names,
    trainable parameters, all parameters). peft's own error when nothing matches is raised as is."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=bool(cfg.get("trust_remote_code")))
        targets = targets_of(adapter, model)
        peft_model = get_peft_model(model, lora_config(adapter, targets))
    from peft.tuners.lora import LoraLayer
    adapted = [name.removeprefix("base_model.model.") for name, module in peft_model.named_modules()
               if isinstance(module, LoraLayer)]
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    return targets, adapted, trainable, total


def apply_adapter(model, adapter: Adapter, cfg: dict, zero3: bool, seed: int, memory):
    """The peft model on this rank: from lora_model_dir when set, else freshly initialised from `seed`.
    memory: ResolvedRun.long_context (whether layers are checkpointed, and how)."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if adapter.quant and not zero3:  # Axolotl skips it under ZeRO-3 too (everything stays in one dtype)
        kwargs = {**(cfg.get("gradient_checkpointing_kwargs") or {}), "use_reentrant": memory.reentrant}  # as load_model
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=memory.checkpointing != "off",
                                                gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # checkpointed layers need a grad-requiring input when the base is frozen
    kwargs = {} if adapter.autocast_adapter_dtype is None else {"autocast_adapter_dtype": adapter.autocast_adapter_dtype}
    if adapter.model_dir:
        return PeftModel.from_pretrained(model, adapter.model_dir, is_trainable=True, **kwargs)
    torch.manual_seed(seed)
    return get_peft_model(model, lora_config(adapter, adapter.resolved_targets or targets_of(adapter, model)), **kwargs)


def trainable_state(module, zero3: bool, tp: bool) -> dict[str, torch.Tensor]:
    """Every trainable parameter, whole (ZeRO-3 gathered, TP shards joined), on CPU; collective: every
    rank calls it, rank 0's dict is the one to save (the others get the same)."""
    import deepspeed

    from ds_tp.train.internals import gather_tp_params

    out: dict[str, torch.Tensor] = {}
    for prefix, child in module.named_modules():
        params = [p for p in child.parameters(recurse=False) if p.requires_grad]
        if not params:
            continue
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if zero3 else nullcontext()
        with gather, gather_tp_params(params, child, enabled=tp):
            for name, param in child.named_parameters(recurse=False):
                if param.requires_grad:
                    out[f"{prefix}.{name}" if prefix else name] = param.data.detach().to("cpu", torch.float32).clone()
    return out


def save_adapter(engine, mesh, plan, out_dir: Path) -> None:
    """adapter_model.safetensors + adapter_config.json (+ the tokenizer) in out_dir, as PeftModel's
    save_pretrained writes them; every rank takes part in the gather, rank 0 writes."""
    run = plan.resolved
    state = trainable_state(engine.module, run.zero3, mesh.layout.tp > 1)
    if not mesh.is_main:
        return
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from ds_tp.model_config import load_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    model = engine.module
    weights = get_peft_model_state_dict(model, state_dict=state, save_embedding_layers=False)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out_dir / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    config = model.peft_config["default"]
    config.base_model_name_or_path = plan.model_path
    config.inference_mode = True
    config.save_pretrained(str(out_dir))
    config.inference_mode = False
    load_tokenizer(plan.model_path, plan.config).save_pretrained(str(out_dir))
