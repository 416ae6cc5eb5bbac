"""The HF-format model at the end of training: safetensors + config + tokenizer, loadable by
AutoModelForCausalLM.from_pretrained. ZeRO-3 and TP shards are gathered into full tensors."""
from __future__ import annotations

from pathlib import Path


def export_hf(engine, mesh, plan, out_dir: Path) -> None:
    stage = engine.zero_optimization_stage()
    if stage == 3 or mesh.layout.tp > 1:
        # Every rank takes part in the gather; only rank 0 gets the full dict.
        state = engine._consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict() if mesh.is_main else None
    if not mesh.is_main:
        return
    from ds_tp.launch.plan import load_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    engine.module.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True, max_shard_size="2GB")
    load_tokenizer(plan.model_path, plan.config).save_pretrained(str(out_dir))
