"""The real `ds-tp train` command with the real launchers (kept few: each start costs ~10-20 s)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT

DS_TP = str(Path(sys.executable).parent / "ds-tp")
SHORT = ["--max-steps", "3", "--logging-steps", "1", "--sequence-len", "64"]


def ds_tp(*args, timeout=400, stderr=True):
    """(exit code, output); stderr=False: stdout alone (stderr is not captured)."""
    env = dict(os.environ, PATH="/usr/bin:/bin", OMP_NUM_THREADS="1")  # venv not activated
    proc = subprocess.Popen([DS_TP, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if stderr else subprocess.DEVNULL, text=True,
                            cwd=ROOT, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        try:  # the launcher and its ranks too, should any outlive ds-tp (a hang, a timeout)
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
    return proc.returncode, out


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_train_through_launcher(tmp_path, launcher):
    out = tmp_path / "run"
    out.mkdir()
    # an older run in the folder, replaced with --overwrite once this one has started
    (out / "metrics.jsonl").write_text('{"step": 7, "old": true}\n')
    (out / "checkpoint-7").mkdir()
    (out / "checkpoint-7" / "ds_tp_state.json").write_text('{"step": 7}')
    (out / "notes.txt").write_text("the user's own file")
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", *SHORT, "--launcher", launcher, "--output-dir", out,
                      "--dataset-prepared-path", tmp_path / "prep", "--overwrite")
    assert code == 0, log[-4000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "was replaced" in log and not (out / "checkpoint-7").exists() and not list(out.glob("replaced-run-*"))
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert (out / "model.safetensors").is_file()
    assert "ZeRO stage 3" in log and "step 3/3 | loss" in log  # piped: plain lines, no bar
    assert "━" not in log and "eta" not in log
    # quiet: the launcher's and the ranks' own lines are in output_dir/ds_tp/logs, not on the console
    for chatter in ("[INFO]", "FutureWarning", "[ds-tp]", "launch.py", "Attempting to get learning rate"):
        assert chatter not in log, (chatter, log[-3000:])
    logs = out / "ds_tp" / "logs"
    rank0 = (logs / "rank-0.log").read_text()
    # the sharding report: ZeRO-3 over 2 ranks holds half of a 64 x 64 projection here
    assert "q_proj.weight: global [64, 64], on TP rank 0/1 [64, 64], held here 2048 elements" in rank0
    assert "step 3/3 | loss" in rank0 and "FutureWarning" in rank0
    assert "==== rank 1, pid" in (logs / "rank-1.log").read_text()
    if launcher == "deepspeed":
        assert "[INFO] [launch.py" in (logs / "launcher.log").read_text()


def test_print_command_uses_this_interpreter(tmp_path):
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", *SHORT, "--print-command", "--output-dir",
                      tmp_path / "o", "--dataset-prepared-path", tmp_path / "prep")
    assert code == 0, log
    assert f"{sys.executable} -m deepspeed.launcher.runner --num_gpus 2" in log


def test_bad_dataset_row_is_one_line_before_any_rank(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text((EXAMPLES / "quickstart.yaml").read_text().replace("examples/quickstart/data/tasks.jsonl", str(data)))
    code, log = ds_tp("train", cfg, "--output-dir", tmp_path / "o", "--dataset-prepared-path", tmp_path / "prep")
    assert code == 2, log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "row 2" in errors[0] and "output" in errors[0], log
    assert "Traceback" not in log and "deepspeed.launcher" not in log


def test_dry_run_prints_layout_and_sharding(tmp_path):
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", *SHORT, "--dry-run", "--tensor-parallel-size", "2",
                      "--num-processes", "4", "--output-dir", tmp_path / "o", "--dataset-prepared-path", tmp_path / "p")
    assert code == 0, log
    assert "layout: dp_replicate(1) * dp_shard(2) * tp(2) * cp(1) = 4" in log
    assert "tp groups: [[0, 1], [2, 3]]" in log and "dp groups: [[0, 2], [1, 3]]" in log
    assert "layers.0.self_attn.q_proj.weight: global [64, 64] -> tp-local [32, 64]" in log
    assert "effective batch: 16 sequences" in log
