"""What accelerator this machine has, without importing torch (validate/translate must start fast).

translate resolves "auto" values (bf16, tf32, fused optimizers) with these facts; train checks the
same facts through torch on each rank, so both see the same answer on the same machine.
"""
from __future__ import annotations

import shutil
import subprocess


def probe_without_torch() -> dict:
    """{'accelerator': 'cuda'|'cpu', 'count', 'name', 'memory_gib', 'bf16', 'tf32', 'source'}."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]
            if rows:
                name, mem, cap = rows[0][0], float(rows[0][1]), float(rows[0][2])
                return {"accelerator": "cuda", "count": len(rows), "name": name, "memory_gib": mem / 1024,
                        "bf16": cap >= 8.0, "tf32": cap >= 8.0, "source": "nvidia-smi"}
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    return cpu_facts("no GPU found (nvidia-smi)")


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
