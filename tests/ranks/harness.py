"""Train through the real code path (prepare in this process, ranks spawned over gloo), read metrics."""
from __future__ import annotations

import json
from pathlib import Path

from ds_tp.launch.train import prepare_training
from ds_tp.train.worker import main as worker_main
from tests.conftest import EXAMPLES
from tests.spawn import run_ranks

QUICKSTART = EXAMPLES / "quickstart.yaml"
# SGD + constant rate: AdamW turns rounding noise into visible differences within a few steps.
SHARP = ["--optimizer", "sgd", "--lr-scheduler", "constant", "--learning-rate", "0.5", "--warmup-steps", "0",
         "--micro-batch-size", "1", "--sequence-len", "64", "--logging-steps", "1"]


def train(out: Path, overrides: list[str], num_processes: int, config: Path = QUICKSTART,
          timeout: float = 400, use_profiler: bool = False, plugin_modules: tuple = ()) -> list[dict]:
    overrides = [*overrides, "--output-dir", str(out), "--dataset-prepared-path", str(out.parent / "prepared")]
    _, plan, plan_path, world, _ = prepare_training(config, overrides, num_processes, use_profiler=use_profiler,
                                                    plugin_modules=plugin_modules)
    run_ranks(worker_main, world, ["--run-file", str(plan_path)], timeout=timeout)
    return read_metrics(out)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(rows: list[dict]) -> list[float]:
    return [r["loss"] for r in rows if "loss" in r]
