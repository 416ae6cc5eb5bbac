"""Axolotl's `plugins:` key, limited to what ds-tp knows unless the command line names a module.

A config is data: it must not make ds-tp import arbitrary code. Known Axolotl plugins map onto ds-tp
features; any other entry is an error unless `--plugin-module NAME` names it on the command line,
in which case each rank imports it and calls the Axolotl plugin hooks it defines:
`pre_model_load(cfg)` and `post_model_load(cfg, model)` (cfg is the resolved config, a dict).
This module is pure at import (no torch): validate/translate use it.
"""
from __future__ import annotations

import importlib

from ds_tp.errors import Finding

CUT_CROSS_ENTROPY = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER = "axolotl.integrations.liger.LigerPlugin"
KERNELS = "axolotl.integrations.kernels.KernelsPlugin"
KNOWN = {
    KERNELS: "no effect: its MoE expert kernels (use_kernels, scattermoe / sonicmoe) have no DeepSpeed "
             "equivalent, and the model's own expert code computes the same values",
    CUT_CROSS_ENTROPY: "with `cut_cross_entropy: true`: ds-tp's chunked fused linear cross-entropy",
    LIGER: "liger_rope / liger_rms_norm / liger_glu_activation: Liger-Kernel's kernels when liger_kernel is "
           "installed on a CUDA run; liger_fused_linear_cross_entropy: ds-tp's chunked fused linear cross-entropy",
}
LIGER_KERNELS = {"liger_rope": "rope", "liger_rms_norm": "rms_norm", "liger_glu_activation": "swiglu"}


def plugin_findings(data: dict, allowed: tuple | list = ()) -> list[Finding]:
    """Check `plugins`, and turn the known plugins' switches into ds-tp settings (in place)."""
    found: list[Finding] = []
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list):
        return found
    for i, name in enumerate(plugins):
        if name in KNOWN:
            found.append(Finding(("plugins", i), f"ds-tp provides it: {KNOWN[name]}", level="notice"))
        elif name in allowed:
            found.append(Finding(("plugins", i), "imported on every rank (named by --plugin-module)", level="notice"))
        else:
            found.append(Finding(("plugins", i), f"{name!r} is not a plugin ds-tp knows, and a config alone never "
                                 "makes ds-tp import code", "known: " + ", ".join(KNOWN) + "; to load this one, "
                                 f"also pass --plugin-module {name}"))
    fused = (CUT_CROSS_ENTROPY in plugins and data.get("cut_cross_entropy")) or \
        (LIGER in plugins and data.get("liger_fused_linear_cross_entropy"))
    if fused and not data.get("chunked_cross_entropy"):
        data["chunked_cross_entropy"] = True
    if data.get("liger_layer_norm") and LIGER in plugins:
        found.append(Finding(("liger_layer_norm",), "ds-tp applies Liger to Llama-family models, which have no "
                             "LayerNorm: ignored", level="warning"))
    for key in [*LIGER_KERNELS, "liger_layer_norm", "liger_fused_linear_cross_entropy", "liger_cross_entropy"]:
        if data.get(key) and LIGER not in plugins:
            found.append(Finding((key,), f"has no effect without plugins: [{LIGER}]", level="warning"))
    if data.get("cut_cross_entropy") and CUT_CROSS_ENTROPY not in plugins:
        found.append(Finding(("cut_cross_entropy",), f"has no effect without plugins: [{CUT_CROSS_ENTROPY}]",
                             level="warning"))
    return found


def load_plugins(names: list[str]) -> list:
    """Rank side: import each explicitly allowed plugin ("pkg.module" or "pkg.module.Class")."""
    loaded = []
    for name in names:
        try:
            loaded.append(importlib.import_module(name))
            continue
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the plugin's own import failed: say so, not "no attribute"
                raise
            module_name, _, attr = name.rpartition(".")
        target = getattr(importlib.import_module(module_name), attr)
        loaded.append(target() if isinstance(target, type) else target)
    return loaded


def call_hook(plugins: list, hook: str, *args) -> None:
    for plugin in plugins:
        fn = getattr(plugin, hook, None)
        if callable(fn):
            fn(*args)


def apply_liger(cfg: dict, accelerator: str, log) -> None:
    """Liger-Kernel's rope/rms_norm/swiglu for Llama-family models, before the model is built."""
    if LIGER not in (cfg.get("plugins") or []):
        return
    wanted = {arg: bool(cfg.get(key)) for key, arg in LIGER_KERNELS.items()}
    if not any(wanted.values()):
        return
    if accelerator != "cuda":
        log(f"{LIGER}: Liger's Triton kernels need a CUDA device; this {accelerator} run trains without them")
        return
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError:
        log(f"{LIGER}: liger_kernel is not installed (pip install liger-kernel); training without its kernels")
        return
    apply_liger_kernel_to_llama(**wanted, cross_entropy=False, fused_linear_cross_entropy=False)
    log(f"{LIGER}: Liger kernels applied: {', '.join(k for k, v in wanted.items() if v)}")
