"""The optimizer, decided once: Axolotl's optimizer name -> who builds it, and what a name ds-tp cannot
run needs instead. Pure (validate and translate read it; no torch).

- adamw_torch, adamw_torch_fused: DeepSpeed builds torch.optim.AdamW from the JSON's optimizer block
  (`torch_adam`, no JIT-built kernel), with HF Trainer's defaults for betas and eps.
- every other name ds-tp runs: each rank builds it with transformers' own
  `Trainer.get_optimizer_cls_and_kwargs` (the class and arguments HF Trainer, and so Axolotl, would
  use, `optim_args` included) and hands it to deepspeed.initialize (ds_tp.train.optimizer).

Either way the parameters come in HF Trainer's two groups (ds_tp.train.optimizer.param_groups): weight
decay on all but biases and norm weights.
"""

from __future__ import annotations

from ds_tp.errors import Finding

from .resolved import ResolvedRun

JSON_ADAMW = ("adamw_torch", "adamw_torch_fused")
# built by transformers' Trainer.get_optimizer_cls_and_kwargs on each rank: name -> what it is
TRANSFORMERS_BUILT = {
    "sgd": "torch.optim.SGD (optim_args: momentum, dampening, nesterov)",
    "adagrad": "torch.optim.Adagrad",
    "rmsprop": "torch.optim.RMSprop",
    "adafactor": "transformers' Adafactor at the given lr (scale_parameter and relative_step off)",
    "adamw_bnb_8bit": "bitsandbytes 8-bit AdamW (blockwise-quantized moments)",
    "adamw_8bit": "bitsandbytes 8-bit AdamW (HF's other name for adamw_bnb_8bit)",
    "paged_adamw_8bit": "bitsandbytes paged 8-bit AdamW (paging is CUDA-only; plain on CPU)",
    "paged_adamw_32bit": "bitsandbytes paged 32-bit AdamW (paging is CUDA-only; plain on CPU)",
    "lion_8bit": "bitsandbytes 8-bit Lion",
    "lion_32bit": "bitsandbytes 32-bit Lion",
    "paged_lion_8bit": "bitsandbytes paged 8-bit Lion",
    "paged_lion_32bit": "bitsandbytes paged 32-bit Lion",
    "rmsprop_bnb": "bitsandbytes 32-bit RMSprop",
    "rmsprop_bnb_8bit": "bitsandbytes 8-bit RMSprop",
    "rmsprop_bnb_32bit": "bitsandbytes 32-bit RMSprop",
    "ademamix": "bitsandbytes AdEMAMix (optim_args: beta3, alpha, t_alpha, t_beta3)",
    "ademamix_8bit": "bitsandbytes 8-bit AdEMAMix",
    "paged_ademamix_32bit": "bitsandbytes paged AdEMAMix",
    "paged_ademamix_8bit": "bitsandbytes paged 8-bit AdEMAMix",
}
SUPPORTED = ", ".join([*JSON_ADAMW, *TRANSFORMERS_BUILT])
OPTIMIZER_HINT = "use one of: " + SUPPORTED
_TORCHAO = "torchao's low-bit optimizers compile their kernels at the first step; use adamw_bnb_8bit"
_HOOKED = "it updates weights inside the backward pass, which DeepSpeed's engine owns"
_PACKAGE = "it needs a package ds-tp does not install ({}); use adamw_torch_fused or a bitsandbytes optimizer"
_AXOLOTL = "it is Axolotl's own implementation, not a maintained package ds-tp can build; use adamw_torch_fused"
WHY_NOT = {
    "adamw_torch_8bit": _TORCHAO,
    "adamw_torch_4bit": _TORCHAO,
    "ao_adamw_4bit": _TORCHAO,
    "ao_adamw_8bit": _TORCHAO,
    "ao_adamw_fp8": _TORCHAO,
    "adamw_torch_xla": "it runs on TPUs only",
    "adamw_torch_npu_fused": "it runs on Ascend NPUs only",
    "adamw_anyprecision": _PACKAGE.format("torchdistx"),
    "grokadamw": _PACKAGE.format("grokadamw"),
    "stable_adamw": _PACKAGE.format("torch-optimi"),
    "optimi_adamw": _PACKAGE.format("torch-optimi"),
    "came_pytorch": _PACKAGE.format("came-pytorch"),
    "scao": _PACKAGE.format("scao"),
    "schedule_free_adamw": _PACKAGE.format("schedulefree") + "; its train/eval switching is not wired either",
    "schedule_free_radam": _PACKAGE.format("schedulefree") + "; its train/eval switching is not wired either",
    "schedule_free_sgd": _PACKAGE.format("schedulefree") + "; its train/eval switching is not wired either",
    "lomo": _HOOKED,
    "adalomo": _HOOKED,
    "galore_adamw_layerwise": _HOOKED,
    "galore_adamw_8bit_layerwise": _HOOKED,
    "galore_adafactor_layerwise": _HOOKED,
    "apollo_adamw_layerwise": _HOOKED,
    "galore_adamw": _PACKAGE.format("galore-torch"),
    "galore_adamw_8bit": _PACKAGE.format("galore-torch"),
    "galore_adafactor": _PACKAGE.format("galore-torch"),
    "apollo_adamw": _PACKAGE.format("apollo-torch"),
    "q_galore_adamw8bit": _PACKAGE.format("q-galore-torch"),
    "flash_adamw": _PACKAGE.format("flashoptim"),
    "flash_adam": _PACKAGE.format("flashoptim"),
    "flash_sgd": _PACKAGE.format("flashoptim"),
    "flash_sgdw": _PACKAGE.format("flashoptim"),
    "flash_lion": _PACKAGE.format("flashoptim"),
}
for _name in ("adopt_adamw", "adamc", "muon", "muon_8bit", "dion", "sinkgd", "polora"):
    WHY_NOT[_name] = _AXOLOTL


def optimizer_name(cfg: dict) -> str:
    return cfg.get("optimizer") or "adamw_torch_fused"


def adam_params(cfg: dict) -> dict:
    """lr, betas, eps and weight decay as Axolotl passes them to HF Trainer (its defaults)."""
    return {
        "lr": float(cfg["learning_rate"]),
        "betas": [float(cfg.get("adam_beta1", 0.9)), float(cfg.get("adam_beta2", 0.999))],
        "eps": float(cfg.get("adam_epsilon", 1e-8)),
        "weight_decay": float(cfg.get("weight_decay", 0.0)),
    }


def optim_args_text(cfg: dict) -> str | None:
    """optim_args as Axolotl hands them to HF Trainer: a mapping becomes "k=v,k=v"; a string stays."""
    value = cfg.get("optim_args")
    if not value:
        return None
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def client_optimizer(cfg: dict) -> dict | None:
    """The TrainingArguments fields transformers builds the optimizer from, when ds-tp builds it (every
    name but AdamW); None when DeepSpeed builds it from the JSON's optimizer block."""
    name = optimizer_name(cfg)
    if name not in TRANSFORMERS_BUILT:
        return None
    adam = adam_params(cfg)
    return {
        "optim": name,
        "learning_rate": adam["lr"],
        "adam_beta1": adam["betas"][0],
        "adam_beta2": adam["betas"][1],
        "adam_epsilon": adam["eps"],
        "optim_args": optim_args_text(cfg),
    }


def optimizer_block(cfg: dict, run: ResolvedRun, out) -> None:
    """The JSON's optimizer block (or the note that ds-tp builds the optimizer) on `out`, a Translation."""
    name = optimizer_name(cfg)
    groups = "; weight decay on all but biases and norm weights (HF Trainer's groups)"
    if name in TRANSFORMERS_BUILT:
        args = client_optimizer(cfg) or {}
        shown = ", ".join(f"{k}={v}" for k, v in args.items() if v is not None and k != "optim")
        out.note(
            "optimizer",
            "(ds-tp)",
            f"{name}({shown})",
            TRANSFORMERS_BUILT[name] + "; built on each rank by "
            "transformers' Trainer.get_optimizer_cls_and_kwargs and handed to deepspeed.initialize" + groups,
        )
        out.set(
            "zero_force_ds_cpu_optimizer",
            False,
            "optimizer",
            "with optimizer offload DeepSpeed would insist on its CPU Adam; this one runs there too",
        )
    elif name in JSON_ADAMW:
        params = {**adam_params(cfg), "torch_adam": True}
        why = "torch.optim.AdamW (torch_adam: no JIT-built fused_adam)"
        if name == "adamw_torch_fused":
            if run.fused_adamw:
                params["fused"] = True
            why += "; fused kernel on CUDA" if run.fused_adamw else "; fused only on CUDA, off here"
        if cfg.get("optim_args"):
            out.findings.append(
                Finding(
                    ("optim_args",),
                    f"no effect with {name}: HF Trainer's AdamW reads none of them (as in Axolotl)",
                    level="warning",
                )
            )
        out.set(
            "optimizer", {"type": "AdamW", "params": params}, "optimizer, learning_rate, weight_decay", why + groups
        )
    else:
        reason = WHY_NOT.get(name, "")
        out.findings.append(
            Finding(
                ("optimizer",),
                f"optimizer {name!r} is not implemented by ds-tp" + (f": {reason}" if reason else ""),
                OPTIMIZER_HINT,
            )
        )
        return
    out.set("zero_allow_untested_optimizer", True, "ds-tp", "torch optimizers are not on ZeRO's tested list")
