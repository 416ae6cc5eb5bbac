"""One rank killed mid-run: every process is gone within 120 s, the command fails naming that rank,
and the last complete checkpoint still exports to a model."""
import json
import os
import signal
import subprocess
import time

from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from ds_tp.cli import main
from tests.conftest import EXAMPLES, ROOT
from tests.launcher.test_train_cli import DS_TP


def test_killed_rank_is_named_and_nothing_hangs(tmp_path):
    """fault: one rank killed (SIGKILL) in the middle of a run
    does: the launcher stops the other rank, ds-tp exits non-zero within 120 s naming the rank (pid, host) that died first
    lost: the steps after the last checkpoint; that checkpoint exports to a model that from_pretrained loads"""
    out = tmp_path / "run"
    env = dict(os.environ, PATH="/usr/bin:/bin", OMP_NUM_THREADS="1")
    job = subprocess.Popen([DS_TP, "train", str(EXAMPLES / "quickstart.yaml"), "--max-steps", "200", "--save-steps",
                            "2", "--logging-steps", "1", "--sequence-len", "64", "--ddp-timeout", "60",
                            "--output-dir", str(out), "--dataset-prepared-path", str(tmp_path / "prep")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (out / "checkpoint-2" / "ds_tp_state.json").exists():
            assert job.poll() is None, job.stdout.read()[-3000:]
            time.sleep(0.2)
        rank1 = json.loads((out / "ds_tp" / "ranks" / "rank-1.json").read_text())
        killed_at = time.monotonic()
        os.kill(rank1["pid"], signal.SIGKILL)
        log, _ = job.communicate(timeout=120)
        assert time.monotonic() - killed_at < 120
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode != 0
    assert f"rank 1 (pid {rank1['pid']}" in log and "failed first" in log, log[-3000:]
    time.sleep(1)
    assert not subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    done = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    result = CliRunner().invoke(main, ["export", str(done[-1]), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf").config.num_hidden_layers == 4
