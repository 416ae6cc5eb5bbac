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


def test_step_intervals_are_the_measured_steps(report):
    ends = [1.0, 2.0, 4.0, 7.0, 11.0]  # steps 1..5 end at these times; warm-up 2
    assert report.step_intervals(ends, 2) == [2.0, 3.0, 4.0]  # steps 3, 4, 5


def test_median_step_ratio_is_a_speed_ratio_from_the_fastest_rounds(report):
    results = {"ds_tp": [run(10, 1.0, step_s=[0.30, 0.20, 0.25]), run(10, 1.0, step_s=[0.22, 0.21, 0.9])],
               "torch": [run(10, 1.0, step_s=[0.24, 0.24, 0.5, 0.23])]}  # median 0.24
    out = report.assemble(results, device={"name": "CPU", "accelerator": "cpu"}, precision="fp32", versions={},
                          setup={"sequence_len": 8, "micro_batch_size": 1, "warmup": 2, "measured": 3},
                          flops_token=1.0, peak_flops=None, date="d")
    assert out["ds_tp_median_step_s_rounds"] == [0.25, 0.22] and out["ds_tp_median_step_s"] == 0.22
    assert out["torch_median_step_s"] == 0.24
    assert out["ds_tp_vs_torch_by_median_step"] == pytest.approx(0.24 / 0.22, abs=1e-4)  # ds-tp faster: > 1
    assert out["ds_tp_vs_torch_by_median_step_by_round"] == [pytest.approx(0.96)]  # rounds both ran
    assert any("median step 0.2200 s" in line for line in report.summary_lines(out))


def test_phase_clock_times_each_phase_of_a_real_loop(bench):
    """bench_ways.PhaseClock on a tiny torch loop: a sleep put in one phase shows up in that phase's median
    and no other, over the measured steps only (the slow warm-up steps are not counted); an optimizer whose
    step calls its base class's (both hooked) counts once."""
    import time

    import bench_ways
    import torch

    class SlowSGD(torch.optim.SGD):
        def step(self, closure=None):
            time.sleep(0.004)  # inside the optimizer step
            return super().step(closure)

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    torch.optim.SGD(model.parameters(), lr=0.1)  # SGD.step patched too: SlowSGD's super().step() fires the hooks again
    optimizer = SlowSGD(model.parameters(), lr=0.1)
    clock = bench_ways.PhaseClock()
    try:
        for step in range(7):
            time.sleep(0.002 if step >= 4 else 0.05)  # between steps (warm-up steps 1-4 much slower)
            out = model(torch.ones(2, 4)).sum()
            time.sleep(0.006)  # after the forward, before the optimizer step
            out.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        clock.close()  # global hooks: gone after the test
    got = clock.medians(warmup=4)
    assert set(got) == {"between", "forward", "backward", "optimizer", "minor_faults_per_step"}
    assert 2.0 <= got["between"] < 20 and 6.0 <= got["backward"] < 30 and 4.0 <= got["optimizer"] < 30
    assert got["forward"] < 2.0
    model(torch.ones(1, 4))
    assert len(clock.events) == 7 * 4  # closed: the forward above was not seen
