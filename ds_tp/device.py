"""What accelerator this machine has, without importing torch (validate/translate must start fast).

translate resolves "auto" values (bf16, tf32, fused optimizers) with these facts; train checks the
same facts through torch on each rank, so both see the same answer on the same machine.
"""
from __future__ import annotations

import shutil
import subprocess

SMI_QUERY = ["--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"]
TARGETS = ("cpu", "cuda", "cuda-fp16")  # --target-device: the ranks' device when not the launching host's


def gpu_facts_from_smi(out: str, source: str) -> dict | None:
    """Facts from `nvidia-smi SMI_QUERY` output, or None when it lists no GPU."""
    try:
        rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]
        if not rows:
            return None
        name, mem, cap = rows[0][0], float(rows[0][1]), float(rows[0][2])
    except (ValueError, IndexError):
        return None
    return {"accelerator": "cuda", "count": len(rows), "name": name, "memory_gib": mem / 1024,
            "bf16": cap >= 8.0, "tf32": cap >= 8.0, "source": source}


def probe_without_torch() -> dict:
    """{'accelerator': 'cuda'|'cpu', 'count', 'name', 'memory_gib', 'bf16', 'tf32', 'source'}."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, *SMI_QUERY], capture_output=True, text=True, timeout=10, check=True).stdout
            facts = gpu_facts_from_smi(out, "nvidia-smi")
            if facts:
                return facts
        except (OSError, subprocess.SubprocessError):
            pass
    return cpu_facts("no GPU found (nvidia-smi)")


def named_target(name: str, count: int) -> dict:
    """Facts for --target-device: cpu, cuda (bf16 and tf32, Ampere or newer) or cuda-fp16 (older GPUs)."""
    if name == "cpu":
        return dict(cpu_facts("--target-device cpu"), count=0)
    modern = name == "cuda"
    return {"accelerator": "cuda", "count": count, "name": "the target GPUs", "memory_gib": None,
            "bf16": modern, "tf32": modern, "source": f"--target-device {name}"}


def cpu_facts(source: str) -> dict:
    return {"accelerator": "cpu", "count": 0, "name": "CPU", "memory_gib": None, "bf16": False, "tf32": False,
            "source": source}


def probe_with_torch() -> dict:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cap = props.major + props.minor / 10
        return {"accelerator": "cuda", "count": torch.cuda.device_count(), "name": props.name,
                "memory_gib": props.total_memory / 2**30, "bf16": torch.cuda.is_bf16_supported(),
                "tf32": cap >= 8.0, "source": "torch"}
    return cpu_facts("torch: no CUDA device")
