"""`ds-tp export CHECKPOINT OUT`: a HF model folder from any ds-tp checkpoint (the zero_to_fp32 job),
so a run that crashed before its final export still yields a usable model."""
from __future__ import annotations

import json
from pathlib import Path

from ds_tp.errors import UserError


def export_checkpoint(checkpoint: Path, out: Path) -> None:
    state_file = checkpoint / "ds_tp_state.json"
    if not state_file.is_file():
        raise UserError(f"{checkpoint}: not a complete ds-tp checkpoint (no ds_tp_state.json)")
    state = json.loads(state_file.read_text())
    layout = state.get("layout", {})
    if layout.get("tp", 1) > 1:
        raise UserError(f"{checkpoint}: exporting a tensor-parallel checkpoint offline is not implemented; "
                        "resume it with the same layout and let training finish (the final export gathers TP shards)")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ds_tp.launch.plan import load_tokenizer

    if any(checkpoint.glob("*optim_states.pt")) and any(checkpoint.glob("zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        sd = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    else:
        sd = torch.load(checkpoint / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    model_cfg = AutoConfig.from_pretrained(state["model_path"])
    model = AutoModelForCausalLM.from_config(model_cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise UserError(f"{checkpoint}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(state["model_path"], state.get("config", {})).save_pretrained(str(out))
