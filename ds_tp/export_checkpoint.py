"""`ds-tp export CHECKPOINT OUT`: a HF model folder from any ds-tp checkpoint (the zero_to_fp32 job),
so a run that crashed before its final export still yields a usable model.

Each tensor-parallel rank's weights are rebuilt on their own (DeepSpeed's zero_to_fp32 merges the
ZeRO partitions of one TP rank), then the TP shards are joined: a parameter whose shape on a TP rank
differs from the model's along one dimension is concatenated along it in TP-rank order (AutoTP
splits q/k/v/gate/up and lm_head by rows, o/down by columns, possibly unevenly); the rest is
replicated and taken from TP rank 0.

An adapter run's checkpoint holds the trainable weights only; its adapter folder (gathered across ZeRO
partitions and TP shards when it was saved) is what export writes: PeftModel.from_pretrained loads it.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ds_tp.errors import UserError
from ds_tp.runfiles import read_state


def export_checkpoint(checkpoint: Path, out: Path) -> None:
    state = read_state(checkpoint)
    if (state.get("run") or {}).get("adapter"):
        export_adapter(checkpoint, out)
        return
    from transformers import AutoModelForCausalLM

    from ds_tp.model_config import load_model_config, load_tokenizer

    tp_ranks = sorted({int(m.group(1)) for f in checkpoint.iterdir()
                       if (m := re.search(r"mp_rank_(\d+)_model_states\.pt$", f.name))})
    if not tp_ranks:
        raise UserError(f"{checkpoint}: no DeepSpeed model states (*mp_rank_XX_model_states.pt) in it")
    shards = [tp_rank_state_dict(checkpoint, r) for r in tp_ranks]
    model = AutoModelForCausalLM.from_config(load_model_config(state["model_path"], state.get("config", {})))
    rows = ((state.get("run") or {}).get("model") or {}).get("vocab")
    if rows and model.get_input_embeddings().num_embeddings != rows:  # the run resized its embeddings
        model.resize_token_embeddings(rows, mean_resizing=False)  # every row is overwritten from the checkpoint
    sd = join_tp_shards(shards, {k: tuple(v.shape) for k, v in model.state_dict().items()}, checkpoint)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise UserError(f"{checkpoint}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(state["model_path"], state.get("config", {})).save_pretrained(str(out))


def tp_rank_state_dict(checkpoint: Path, tp_rank: int) -> dict:
    """One TP rank's full (un-ZeRO-partitioned) weights, fp32 where an fp32 master copy exists."""
    import torch

    mine = [f for f in checkpoint.iterdir() if f"mp_rank_{tp_rank:02d}_" in f.name]
    if not any(f.name.endswith("optim_states.pt") and f.name.startswith("zero_pp_rank_") for f in mine):
        # ZeRO stage 0: the module's own state dict
        return torch.load(checkpoint / f"mp_rank_{tp_rank:02d}_model_states.pt", map_location="cpu",
                          weights_only=False)["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    # zero_to_fp32 merges every *_optim_states.pt of a folder: give it this TP rank's files only.
    with tempfile.TemporaryDirectory() as tmp:
        tag = Path(tmp) / checkpoint.name
        tag.mkdir()
        for f in mine:
            os.symlink(f.resolve(), tag / f.name)
        return get_fp32_state_dict_from_zero_checkpoint(tmp, tag=checkpoint.name)


def join_tp_shards(shards: list[dict], shapes: dict[str, tuple], checkpoint: Path) -> dict:
    import torch

    if len(shards) == 1:
        return shards[0]
    joined = {}
    for name, first in shards[0].items():
        want = shapes.get(name)
        if want is None or tuple(first.shape) == want:
            joined[name] = first
            continue
        dims = [d for d in range(first.dim()) if first.shape[d] != want[d]]
        parts = [s[name] for s in shards]
        if len(dims) != 1 or sum(p.shape[dims[0]] for p in parts) != want[dims[0]]:
            raise UserError(f"{checkpoint}: {name} is {list(first.shape)} on TP rank 0 and {list(want)} in the "
                            f"model: not a split along one dimension over {len(shards)} TP ranks")
        joined[name] = torch.cat(parts, dim=dims[0])
    return joined


def export_adapter(checkpoint: Path, out: Path) -> None:
    import shutil

    from ds_tp.runfiles import ADAPTER_FILES

    if not all((checkpoint / name).is_file() for name in ADAPTER_FILES):
        raise UserError(f"{checkpoint}: an adapter run's checkpoint without its adapter folder ({', '.join(ADAPTER_FILES)})")
    out.mkdir(parents=True, exist_ok=True)
    for path in checkpoint.iterdir():
        if path.name in ADAPTER_FILES or path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(path, out / path.name)
