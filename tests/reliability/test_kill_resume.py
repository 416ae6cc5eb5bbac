"""kill -9 of the whole job (ds-tp, launcher, ranks: one process group), then auto-resume: the losses
logged after the resume equal an uninterrupted run's, bitwise on CPU, and metrics.jsonl reads as one run."""
import json
import os
import signal
import subprocess
import time

from tests.conftest import EXAMPLES, ROOT
from tests.launcher.test_train_cli import DS_TP, ds_tp

RUN = ["--max-steps", "10", "--save-steps", "2", "--logging-steps", "1", "--sequence-len", "64"]


def metrics(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def test_kill_9_after_checkpoint_then_auto_resume(tmp_path):
    """fault: kill -9 of the whole job (ds-tp, launcher, ranks) after checkpoint-4 of 10 steps
    does: every process is gone; the same command with --auto-resume-from-checkpoints resumes from checkpoint-4, metrics.jsonl is cut back to step 4 and continues
    lost: nothing: steps 5-10 log bitwise the losses of an uninterrupted run"""
    common = [*RUN, "--dataset-prepared-path", str(tmp_path / "prep")]
    ref = tmp_path / "ref"
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", *common, "--output-dir", ref)
    assert code == 0, log[-3000:]
    reference = {r["step"]: r["loss"] for r in metrics(ref)}

    out = tmp_path / "killed"
    env = dict(os.environ, PATH="/usr/bin:/bin", OMP_NUM_THREADS="1")
    job = subprocess.Popen([DS_TP, "train", str(EXAMPLES / "quickstart.yaml"), *common, "--output-dir", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env,
                           start_new_session=True)  # its own group, as the user's shell gives it
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(r.get("step") == 5 for r in metrics(out)):
            assert job.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        assert (out / "checkpoint-4").is_dir(), list(out.iterdir())
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(30)
    time.sleep(1)
    leftovers = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes survived the group kill: {leftovers}"

    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", *common, "--output-dir", out,
                      "--auto-resume-from-checkpoints")
    assert code == 0, log[-3000:]
    assert "resumed from" in log
    rows = metrics(out)
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, 11)), steps  # cut back to the checkpoint, then continued: one clean run
    assert {r["step"]: r["loss"] for r in rows if r["step"] > 4} == {s: reference[s] for s in range(5, 11)}
