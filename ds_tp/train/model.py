"""Load the HF model on each rank: partitioned at load time under ZeRO-3, attention chosen for the device."""
from __future__ import annotations

import torch

from ds_tp.train.mesh import Mesh
from ds_tp.translators.trainable import trainable_matcher


def attention_for(cfg: dict, accelerator: str, log, decided: str | None = None) -> str:
    """The attention decided before launch (model_config.choose_attention), with this rank's own fallback
    when flash attention is not installed here."""
    attn = decided or cfg.get("attn_implementation") or "sdpa"
    if attn.startswith("flash_attention") and accelerator != "cuda":
        log(f"attn_implementation {attn} needs a GPU: using sdpa on this {accelerator} run")
        return "sdpa"
    if attn.startswith("flash_attention"):
        import importlib.util
        if importlib.util.find_spec("flash_attn") is None:
            log(f"attn_implementation {attn}: flash_attn is not installed, using sdpa")
            return "sdpa"
    return attn


def load_model(plan, run, attn: str, log=None):
    """(model, keep_alive). keep_alive must outlive the model build: HF reads the ZeRO-3 config from it."""
    import transformers.models.llama.modeling_llama  # noqa: F401  (import before zero.Init patches tensors)
    from transformers import AutoModelForCausalLM

    keep_alive = None
    if run.loads_partitioned:  # see ResolvedRun.loads_partitioned for the layouts that load whole
        # Parameters are partitioned as each layer is built: no rank ever holds the whole model.
        from transformers.integrations import HfDeepSpeedConfig
        keep_alive = HfDeepSpeedConfig(plan.ds_config)
    from ds_tp.model_config import load_model_config
    from ds_tp.train.adapter import quantization_config
    quantized = quantization_config(run.adapter, run)  # QLoRA / 8-bit LoRA: bitsandbytes layers for the frozen base
    model = AutoModelForCausalLM.from_pretrained(
        plan.model_path, config=load_model_config(plan.model_path, plan.config), attn_implementation=attn,
        dtype=torch.float32, trust_remote_code=bool(plan.config.get("trust_remote_code")),
        **({"quantization_config": quantized} if quantized is not None else {}))
    resize_embeddings(model, run.model.vocab if run.model else None, plan.config)
    trains = trainable_matcher(plan.config.get("unfrozen_parameters"))
    for name, param in model.named_parameters():  # before deepspeed.initialize: frozen ones get no state
        param.requires_grad_(trains(name))
    memory = run.long_context
    if memory.checkpointing != "off":
        kwargs = {**(plan.config.get("gradient_checkpointing_kwargs") or {}), "use_reentrant": memory.reentrant}
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if memory.reentrant:  # reentrant checkpoints pass gradients only to inputs that require them (LoRA's base
            model.enable_input_require_grads()  # embeddings are frozen): make the embeddings' output require one
    if memory.mlp_tiles:
        from ds_tp.train.tiled import install_tiled_mlp
        from ds_tp.translators.long_context import axolotl_mlp_tiles
        tiles = memory.mlp_tiles if memory.mlp_tiles > 0 else axolotl_mlp_tiles(  # -1: the width is read here
            int(plan.config["sequence_len"]), run.layout.cp, model.config.hidden_size)
        install_tiled_mlp(model, tiles, log or (lambda _: None))
    model.config.use_cache = False
    return model, keep_alive


def resize_embeddings(model, rows: int | None, cfg: dict) -> None:
    """Grow (or shrink) the token embeddings to the rows decided before launch (model_shape.embedding_rows).
    New rows start at the old rows' mean, as transformers does by default (mean_resizing_embeddings);
    every rank draws them from the same seeded generator, and under ZeRO-3 transformers gathers the
    partitioned weight for it."""
    if rows is None or model.get_input_embeddings().num_embeddings == rows:
        return
    mean = cfg.get("mean_resizing_embeddings")
    model.resize_token_embeddings(rows, mean_resizing=True if mean is None else bool(mean))


def shapes_before_sharding(model) -> dict[str, tuple]:
    """Global parameter shapes, taken before AutoTP splits them (ZeRO-3 keeps them as ds_shape)."""
    return {name: tuple(getattr(p, "ds_shape", p.shape)) for name, p in model.named_parameters()}


def sharding_report(engine, mesh: Mesh, global_shapes: dict[str, tuple], limit: int = 8) -> list[str]:
    """Global vs local shapes of a few parameters: proof that TP / ZeRO-3 took effect on this rank."""
    lines = []
    for name, param in engine.module.named_parameters():
        if not any(k in name for k in ("layers.0.self_attn.q_proj", "layers.0.mlp.down_proj", "embed_tokens",
                                       "lm_head")):
            continue
        tp_local = list(getattr(param, "ds_shape", param.shape))
        held = getattr(param, "ds_tensor", param).numel()
        lines.append(f"rank {mesh.rank} {name}: global {list(global_shapes.get(name, tp_local))}, on TP rank "
                     f"{mesh.coords['tp']}/{mesh.layout.tp} {tp_local}, held here {held} elements")
        if len(lines) >= limit:
            break
    return lines
