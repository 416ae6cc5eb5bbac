"""scripts/bench.py's pure helpers: ds-tp's metrics window, the result JSON and its ratios (no training)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ds_tp_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(bench):
    """scripts/bench_report.py, which loading bench.py put on sys.path."""
    import bench_report
    return bench_report


def run(tokens: int, seconds: float, steps: int = 4, mem: float = 1.0, **extra) -> dict:
    return {"tokens": tokens, "seconds": seconds, "steps": steps, "peak_mem_gib": mem, **extra}


def test_ds_tp_window_skips_warmup_and_counts_real_tokens(report):
    real = {1: 80, 2: 80, 3: 100, 4: 60, 5: 80, 6: 80}  # real (non-padding) tokens, what tokens_per_s counts
    rows = [{"step": 2, "tokens_per_s": 1.0},  # warm-up: never counted
            {"step": 4, "tokens_per_s": 160.0},  # steps 3-4: 160 tokens in 1 s
            {"step": 4, "eval_loss": 3.0},
            {"step": 6, "tokens_per_s": 80.0}]  # steps 5-6: 160 tokens in 2 s
    tokens, seconds = report.ds_tp_window(rows, 2, real)
    assert tokens == 320
    assert seconds == pytest.approx(3.0)


def test_ds_tp_window_needs_a_row_at_the_end_of_warmup(report):
    with pytest.raises(ValueError, match="logging_steps"):
        report.ds_tp_window([{"step": 3, "tokens_per_s": 1.0}], 2, {1: 1, 2: 1, 3: 1})


def test_assemble_ratios_best_round_and_failures(report):
    results = {
        "ds_tp": [run(1000, 2.0), run(1000, 1.0)],  # best round: 1000 tok/s
        "hf_trainer": [run(1000, 1.25)],  # 800 tok/s
        "hf_trainer_zero3": [{"error": "exit 1"}],
        "torch": [run(1000, 0.5, mem=0.5)],  # 2000 tok/s
    }
    out = report.assemble(results, device={"name": "NVIDIA H100 80GB HBM3", "accelerator": "cuda"},
                         precision="bf16", versions={"torch": "x"}, setup={"sequence_len": 8, "micro_batch_size": 1,
                                                                           "warmup": 2, "measured": 4},
                         flops_token=1e9, peak_flops=1e12, date="2026-01-01")
    assert out["ds_tp_tokens_per_s"] == 1000.0
    assert out["ds_tp_tokens_per_s_rounds"] == [500.0, 1000.0]
    assert out["ds_tp_vs_hf_trainer"] == pytest.approx(1.25)
    assert out["ds_tp_vs_torch"] == pytest.approx(0.5)
    assert out["hf_trainer_zero3_tokens_per_s"] is None and out["ds_tp_vs_hf_trainer_zero3"] is None
    assert out["hf_trainer_zero3_error"] == "exit 1"
    assert out["ds_tp_mfu"] == pytest.approx(1.0)  # 1000 tok/s * 1e9 FLOP/token / 1e12 FLOP/s
    assert out["ds_tp_s_per_step"] == pytest.approx(0.25)
    assert out["torch_peak_mem_gib"] == 0.5
    assert out["device"] == "NVIDIA H100 80GB HBM3" and out["versions"] == {"torch": "x"}
    json.dumps(out, allow_nan=False)  # one JSON line
    lines = report.summary_lines(out)
    assert any("FAILED: exit 1" in line for line in lines) and any("MFU 100.0%" in line for line in lines)


def test_no_mfu_without_a_peak(report):
    out = report.assemble({"ds_tp": [run(10, 1.0)]}, device={"name": "CPU", "accelerator": "cpu"}, precision="fp32",
                         versions={}, setup={}, flops_token=1e6, peak_flops=None, date="d")
    assert out["ds_tp_mfu"] is None and out["ds_tp_vs_hf_trainer"] is None


def test_round_orders_alternate(report):
    assert report.round_orders(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]


def test_device_slug(report):
    assert report.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert report.device_slug("CPU") == "cpu"


def test_paired_ratios_skip_failed_rounds(report):
    assert report.paired_ratios([100.0, None, 300.0], [50.0, 10.0, 150.0]) == [2.0, 2.0]
    assert report.paired_ratios(None, [1.0]) == []
