"""SIGTERM to the whole job (as a scheduler preempting it does): the ranks finish their step, save a
checkpoint, and `ds-tp train` exits with 75; --auto-resume-from-checkpoints continues from it."""
import json
import os
import signal

from ds_tp.runfiles import checkpoint_step
from tests.conftest import EXAMPLES
from tests.launcher.test_train_cli import ds_tp
from tests.reliability.job import metrics, training_job, wait_for

RUN = ["--max-steps", "12", "--logging-steps", "1", "--sequence-len", "64"]


def _sigterm_at_step(tmp_path, common, out, step: int):
    """Start `ds-tp train`, SIGTERM its whole process group once metrics show `step`; (exit code, log)."""
    log_path = tmp_path / "sigterm.log"
    with training_job(common, log_path) as job:
        wait_for(job, lambda: any(r.get("step") == step for r in metrics(out)), log_path)
        os.killpg(job.pid, signal.SIGTERM)
        job.wait(timeout=120)
    return job.returncode, log_path.read_text()


def test_sigterm_saves_then_resumes(tmp_path):
    """fault: SIGTERM to the whole job (a scheduler preempting it)
    does: ranks agree at the next step boundary, save a checkpoint, exit; ds-tp exits 75 and auto-resume finishes the run
    lost: nothing: the checkpoint is the step the job stopped at"""
    out = tmp_path / "run"
    common = [*RUN, "--output-dir", str(out), "--dataset-prepared-path", str(tmp_path / "prep")]
    code, log = _sigterm_at_step(tmp_path, common, out, 3)
    assert code == 75, log[-3000:]
    stopped = json.loads((out / "ds_tp" / "preempted.json").read_text())
    step = stopped["step"]
    assert 3 <= step < 12 and "stopped by SIGTERM" in log
    assert (out / f"checkpoint-{step}" / "ds_tp_state.json").is_file()
    assert max(r["step"] for r in metrics(out)) == step
    assert not (out / "model.safetensors").exists()  # no export of a half-trained model
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", *common, "--auto-resume-from-checkpoints")
    assert code == 0, log[-3000:]
    assert [r["step"] for r in metrics(out)] == list(range(1, 13))
    assert (out / "model.safetensors").is_file()


def test_sigterm_without_time_to_save_keeps_the_last_checkpoint(tmp_path):
    """fault: SIGTERM when a save would not fit preemption_grace_period (set to 0.001 s here)
    does: ranks stop at the next step boundary without starting a save; ds-tp exits 75 naming why and the last checkpoint
    lost: the steps after the last checkpoint (the kill would have cut a save short anyway)"""
    out = tmp_path / "run"
    common = [*RUN, "--save-steps", "2", "--preemption-grace-period", "0.001", "--output-dir", str(out),
              "--dataset-prepared-path", str(tmp_path / "prep")]
    code, log = _sigterm_at_step(tmp_path, common, out, 3)
    assert code == 75, log[-3000:]
    stopped = json.loads((out / "ds_tp" / "preempted.json").read_text())
    assert stopped["why_not_saved"] and "preemption_grace_period" in log and "no checkpoint saved" in log
    saved = sorted(checkpoint_step(p) for p in out.glob("checkpoint-*"))
    assert saved and all(s % 2 == 0 for s in saved) and stopped["checkpoint"].endswith(f"checkpoint-{saved[-1]}")
    assert not list(out.glob("tmp-save-*"))
