"""Parameter groups as HF Trainer builds them, and the optimizers DeepSpeed's JSON cannot name, built
with transformers' own Trainer.get_optimizer_cls_and_kwargs (translators.optimizer.client_optimizer is
the one decision of which) and handed to deepspeed.initialize.

Groups: weight decay on every trainable weight but biases and norm weights, by transformers' own rule
(Trainer.get_decay_parameter_names); ZeRO partitions each group separately.

8-bit bitsandbytes optimizers: HF Trainer keeps the embeddings' moments in 32 bits (a per-parameter
override). Where the optimizer holds the model's own parameters (ZeRO stage 0 without a bf16/fp16
master copy) ds-tp registers the same override. Under ZeRO, DeepSpeed swaps each group's tensors for
its own flat fp32 partitions, so no embedding is left to override and every moment is 8-bit.
"""
from __future__ import annotations

from ds_tp.translators.optimizer import client_optimizer


def param_groups(model, weight_decay: float) -> list[dict]:
    """[{params, weight_decay}, {params, weight_decay: 0}] over the trainable parameters, empty groups left out."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))  # the method reads only its model argument
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def optimizer_class(cfg: dict):
    """(class, keyword arguments) as HF Trainer would build cfg's optimizer, or None for DeepSpeed's JSON."""
    fields = client_optimizer(cfg)
    if fields is None:
        return None
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()  # its warnings are about launching Trainer, which ds-tp does not do
    try:
        args = TrainingArguments(output_dir=cfg.get("output_dir") or "model-out", report_to="none",
                                 weight_decay=float(cfg.get("weight_decay") or 0.0), **fields)
    finally:
        logging.set_verbosity(level)
    return Trainer.get_optimizer_cls_and_kwargs(args)


def build_optimizer(cfg: dict, groups: list[dict], model=None, holds_model_params: bool = False):
    """The client optimizer for deepspeed.initialize, or None when the JSON's optimizer block is used."""
    choice = optimizer_class(cfg)
    if choice is None:
        return None
    cls, kwargs = choice
    optimizer = cls(groups, **kwargs)
    if holds_model_params and model is not None and kwargs.get("optim_bits") == 8 and "bitsandbytes" in cls.__module__:
        import bitsandbytes
        import torch

        manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                manager.register_module_override(module, "weight", {"optim_bits": 32})
    return optimizer


def optimizer_problem(cfg: dict) -> str | None:
    """Build cfg's optimizer once on a one-tensor group: transformers' or the optimizer's own complaint
    (a missing package, optim_args it cannot read), or None."""
    if client_optimizer(cfg) is None:
        return None
    import torch

    try:
        build_optimizer(cfg, [{"params": [torch.nn.Parameter(torch.zeros(4))], "weight_decay": 0.0}])
    except (ImportError, TypeError, ValueError, KeyError) as exc:
        return f"{cfg.get('optimizer')}: {exc}"
    return None
