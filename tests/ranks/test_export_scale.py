"""`ds-tp export` at scale: its memory is bounded by a layer and an output shard, not by the model.

Two ZeRO-3 runs (dp_shard 2, 2 spawned ranks) of Llama models of the same width (hidden 512), one with
4x the layers of the other, each save a checkpoint; each checkpoint is exported in a fresh interpreter
whose anonymous memory (RssAnon: the heap, not the page cache that the mmapped checkpoint files occupy,
which the kernel may drop) is sampled from outside. Exporting 4x the layers must not cost more memory
beyond a fraction of what the model grew. The exported weights equal DeepSpeed's own zero_to_fp32.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ds_tp.assets import resolve_builtin_model
from tests.ranks.hf_reference import BASE, prepare, train_all

WIDTH = dict(hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=8, head_dim=64)
LAYERS = (2, 8)
RUN = {**BASE, "optimizer": "sgd", "lr_scheduler": "constant", "learning_rate": 0.1, "warmup_steps": 0,
       "weight_decay": 0.0, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 2,
       "save_steps": 1, "dp_shard_size": 2}
EXPORT = ("import sys; from pathlib import Path; from ds_tp.export_checkpoint import export_checkpoint; "
          "export_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]))")


def base_model(folder: Path, layers: int) -> Path:
    """The builtin tiny Llama's tokenizer and config, widened to WIDTH with `layers` layers, random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tiny = resolve_builtin_model("builtin:tiny-llama")
    config = AutoConfig.from_pretrained(tiny)
    for key, value in {**WIDTH, "num_hidden_layers": layers}.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for path in tiny.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(path, folder / path.name)
    return folder


def peak_anon_mib(checkpoint: Path, out: Path, log: Path) -> float:
    """`ds-tp export` in a fresh interpreter (4 MB output shards); its peak RssAnon, sampled every 2 ms."""
    env = {**os.environ, "DS_TP_EXPORT_SHARD_MB": "4"}
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", EXPORT, str(checkpoint), str(out)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(peak, int(status.split("RssAnon:")[1].split()[0]))
            except (OSError, IndexError, ValueError):
                pass  # exiting
            time.sleep(0.002)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return peak / 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="samples /proc/PID/status (Linux)")
def test_export_memory_does_not_grow_with_the_model(tmp_path):
    run_files = [prepare(tmp_path, f"layers{n}", {**RUN, "base_model": str(base_model(tmp_path / f"base{n}", n))},
                         tmp_path / "prepared", world=2) for n in LAYERS]
    train_all(run_files, world=2, timeout=300)
    checkpoints = [tmp_path / f"layers{n}" / "checkpoint-1" for n in LAYERS]
    peaks = [peak_anon_mib(c, tmp_path / f"hf{n}", tmp_path / f"export{n}.log") for c, n in zip(checkpoints, LAYERS)]
    sizes = [sum(f.stat().st_size for f in (tmp_path / f"hf{n}").glob("*.safetensors")) / 2**20 for n in LAYERS]
    assert sizes[1] - sizes[0] > 50  # ~20 MiB and ~80 MiB of fp32 weights, in 4 MB shards
    growth = peaks[1] - peaks[0]
    # building the model or its state dict costs at least the model's growth (60 MiB): the old export grew ~3x that
    assert growth < 0.25 * (sizes[1] - sizes[0]), f"peak RssAnon {peaks} MiB for exported weights of {sizes} MiB"

    # the weights are DeepSpeed's zero_to_fp32 of the checkpoint, bit for bit, and from_pretrained loads them
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    reference = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints[0].parent), tag=checkpoints[0].name)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / f"hf{LAYERS[0]}").state_dict()
    assert (tmp_path / f"hf{LAYERS[0]}" / "model.safetensors.index.json").is_file()
    assert exported.keys() == reference.keys()
    assert all(torch.equal(exported[k], reference[k]) for k in reference)


def test_tp_shards_are_joined_exactly(tmp_path):
    """tp 2, only model.norm trains: every other weight of the exported checkpoint, AutoTP's row and column
    splits joined again, is the base model's bit for bit (fp32, lm_head included: the model is untied)."""
    from safetensors.torch import load_file

    from ds_tp.export_checkpoint import export_checkpoint
    from tests.ranks.harness import SHARP, train

    train(tmp_path / "run", [*SHARP, "--max-steps", "2", "--save-steps", "1", "--dp-shard-size", "1",
                             "--tensor-parallel-size", "2", "--unfrozen-parameters", "[model.norm.weight$]"], 2)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoint-1").glob("*model_states.pt")) == [
        "mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"]
    export_checkpoint(tmp_path / "run" / "checkpoint-1", tmp_path / "hf")
    got = load_file(tmp_path / "hf" / "model.safetensors")
    base = load_file(resolve_builtin_model("builtin:tiny-llama") / "model.safetensors")
    assert got.keys() == base.keys() and all(v.dtype == torch.float32 for v in got.values())
    assert [k for k in base if not torch.equal(got[k], base[k])] == ["model.norm.weight"]
