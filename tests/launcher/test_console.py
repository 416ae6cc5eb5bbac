"""What a user sees: in a real terminal (tmux) a progress bar with ETA and no DeepSpeed/torch chatter, eval and
save lines, the summary and the curves picture at the end; `ds-tp evaluate` on the saved model gives the eval
loss that training logged for it, on the training layout and on one process."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import EXAMPLES
from tests.launcher.test_train_cli import DS_TP, ds_tp

CHATTER = ("[INFO]", "[WARNING]", "FutureWarning", "[ds-tp]", "launch.py", "Attempting to get learning rate",
           "gemm_4bit", "Traceback")


def tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=30).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_terminal_shows_a_bar_with_eta_and_no_chatter(tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "run.sh"
    script.write_text(f"OMP_NUM_THREADS=1 {DS_TP} train {EXAMPLES / 'quickstart.yaml'} --max-steps 60 "
                      f"--logging-steps 5 --val-set-size 0.05 --eval-steps 30 --save-steps 30 --output-dir {out} "
                      f"--dataset-prepared-path {tmp_path / 'prep'}; echo DS_TP_EXIT=$?; sleep 300\n")
    socket = f"ds-tp-test-{os.getpid()}"  # its own tmux server, started with this environment
    panes, final = [], ""
    tmux(socket, "new-session", "-d", "-s", "t", "-x", "200", "-y", "60", f"bash {script}")
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            pane = tmux(socket, "capture-pane", "-p", "-J", "-t", "t")  # -J: wrapped lines joined
            panes.append(pane)
            if "DS_TP_EXIT=" in pane:
                final = pane
                break
            time.sleep(0.5)
    finally:
        tmux(socket, "kill-server")
    assert "DS_TP_EXIT=0" in final, (panes[-1:] or [""])[0]
    running = [line for pane in panes for line in pane.splitlines()
               if line.startswith("train ") and "eta" in line and "/60" in line and "60/60" not in line]
    assert running, "no pane showed the bar mid-run"
    lines = final.splitlines()
    [at] = [i for i, line in enumerate(lines) if line.startswith("train ")]
    bar, figures = lines[at], lines[at + 1]  # the bar, and the latest figures under it
    assert "━" in bar and "60/60" in bar and "eta 0:00:00" in bar, bar
    assert figures.startswith("  loss ") and "| lr " in figures and "| gnorm " in figures and "tok/s" in figures
    for line in ("eval at step 30: eval_loss", "eval at step 60: eval_loss", f"ds-tp: saved {out}/checkpoint-30",
                 f"ds-tp: curves: {out}/training_curves.png"):
        assert line in final, (line, final)
    assert not [c for c in CHATTER if c in final], final
    assert "step 5/60 | loss" not in final  # the bar replaces the per-step lines
    assert (out / "training_curves.png").stat().st_size > 10_000
    rank0 = (out / "ds_tp" / "logs" / "rank-0.log").read_text()
    assert "step 60/60 | loss" in rank0 and "FutureWarning" in rank0  # nothing lost: the record is in the log


def test_evaluate_gives_the_eval_loss_training_logged(tmp_path):
    out = tmp_path / "run"
    common = ["--val-set-size", "0.05", "--dataset-prepared-path", tmp_path / "prep", "--sequence-len", "64"]
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", "--max-steps", "8", "--eval-steps", "8",
                      "--output-dir", out, *common)
    assert code == 0, log[-3000:]
    logged = [json.loads(x)["eval_loss"] for x in (out / "metrics.jsonl").read_text().splitlines()
              if "eval_loss" in x][-1]
    for layout in ([], ["--dp-shard-size", "1", "--num-processes", "1"]):
        code, log = ds_tp("evaluate", EXAMPLES / "quickstart.yaml", "--base-model", out, "--output-dir", out,
                          *common, *layout)
        assert code == 0, log[-3000:]
        with open(out / "eval_summary.csv") as f:
            table = {row["metric"]: row for row in csv.DictReader(f)}
        assert float(table["loss"]["validation"]) == pytest.approx(logged, abs=1e-5, rel=1e-6), (layout, log)
        assert float(table["perplexity"]["validation"]) == pytest.approx(2.718281828 ** logged, rel=1e-5)
        assert float(table["loss"]["training"]) > 0
        assert "eval: loss" in log and not [c for c in CHATTER if c in log], log
    # evaluate keeps to its own root: the training run's files are untouched
    assert (out / "ds_tp" / "run.json").is_file() and (out / "ds_tp_evaluate" / "ds_tp" / "run.json").is_file()
    assert "==== rank 0" in (out / "ds_tp_evaluate" / "ds_tp" / "logs" / "rank-0.log").read_text()
