"""Training FLOPs per token and MFU.

FLOPs per token = 6 * N + 12 * L * H * T: 6N for the matmuls of forward+backward over the N
non-embedding parameters and 12*L*H*T for attention scores and values (Kaplan et al. 2020,
"Scaling Laws for Neural Language Models", sec. 2.1; PaLM, Chowdhery et al. 2022, appendix B,
the formula nanoGPT/nanochat use). Gradient checkpointing's recompute is not counted (MFU, not HFU).
"""
from __future__ import annotations

# Dense bf16/fp16 peak FLOP/s per device, from the vendors' datasheets (no sparsity).
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
    "A100": 312e12, "A800": 312e12, "A10G": 125e12, "L40S": 362e12, "L4": 121e12, "V100": 125e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12,
}
PEAK_SOURCE = "vendor datasheet, dense bf16/fp16 tensor cores"


def flops_per_token(n_params_non_embedding: int, n_layers: int, hidden: int, seq_len: int) -> float:
    return 6.0 * n_params_non_embedding + 12.0 * n_layers * hidden * seq_len


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak for this device, or None when unknown (CPUs): MFU is then not reported."""
    if precision == "fp32":
        return None  # fp32 matmul peaks differ (and TF32 blurs them): don't guess
    for key, value in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if key in device_name:
            return value
    return None


def mfu(tokens_per_s_per_device: float, flops_token: float, peak: float | None) -> float | None:
    return None if not peak else tokens_per_s_per_device * flops_token / peak
