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


def _signal_at_step(tmp_path, common, out, step: int, sig=signal.SIGTERM, rank: int | None = None):
    """Start `ds-tp train`; once metrics show `step`, send `sig` to its whole process group (or to one rank's pid
    only); (exit code, log, the last step logged when the signal was sent: read just after sending it, so a step
    that ended in between counts as before the signal)."""
    log_path = tmp_path / "signal.log"
    with training_job(common, log_path) as job:
        wait_for(job, lambda: any(r.get("step") == step for r in metrics(out)), log_path)
        if rank is None:
            os.killpg(job.pid, sig)
        else:
            os.kill(json.loads((out / "ds_tp" / "ranks" / f"rank-{rank}.json").read_text())["pid"], sig)
        sent = max(r["step"] for r in metrics(out))
        job.wait(timeout=120)
    return job.returncode, log_path.read_text(), sent


def test_sigterm_saves_then_resumes(tmp_path):
    """fault: SIGTERM to the whole job (a scheduler preempting it)
    does: every rank stops within 2 steps of the signal, a checkpoint of that step is saved, no model is exported; ds-tp exits 75 and auto-resume finishes the run
    lost: nothing: the checkpoint is the step the job stopped at"""
    out = tmp_path / "run"
    common = [*RUN, "--output-dir", str(out), "--dataset-prepared-path", str(tmp_path / "prep")]
    code, log, sent = _signal_at_step(tmp_path, common, out, 3)
    assert code == 75, log[-3000:]
    stopped = json.loads((out / "ds_tp" / "preempted.json").read_text())
    step = stopped["step"]
    assert sent <= step <= sent + 2 and "stopped by SIGTERM" in log  # the boundary after next, at the latest
    assert (out / f"checkpoint-{step}" / "ds_tp_state.json").is_file()
    assert max(r["step"] for r in metrics(out)) == step
    assert not (out / "model.safetensors").exists()  # no export of a half-trained model
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", *common, "--auto-resume-from-checkpoints")
    assert code == 0, log[-3000:]
    assert [r["step"] for r in metrics(out)] == list(range(1, 13))
    assert (out / "model.safetensors").is_file()


def test_sigint_without_time_to_save_keeps_the_last_checkpoint(tmp_path):
    """fault: SIGINT (Ctrl-C) when a save would not fit preemption_grace_period (set to 0.001 s here)
    does: the ranks stop within 2 steps of the signal without starting a save; ds-tp exits 75 naming SIGINT, why and the last checkpoint
    lost: the steps after the last checkpoint (the kill would have cut a save short anyway)"""
    out = tmp_path / "run"
    common = [*RUN, "--save-steps", "2", "--preemption-grace-period", "0.001", "--output-dir", str(out),
              "--dataset-prepared-path", str(tmp_path / "prep")]
    code, log, sent = _signal_at_step(tmp_path, common, out, 3, sig=signal.SIGINT)
    assert code == 75, log[-3000:]
    stopped = json.loads((out / "ds_tp" / "preempted.json").read_text())
    assert stopped["signal"] == "SIGINT" and sent <= stopped["step"] <= sent + 2 and "stopped by SIGINT" in log
    assert stopped["why_not_saved"] and "preemption_grace_period" in log and "no checkpoint saved" in log
    saved = sorted(checkpoint_step(p) for p in out.glob("checkpoint-*"))
    assert saved and all(s % 2 == 0 for s in saved) and stopped["checkpoint"].endswith(f"checkpoint-{saved[-1]}")
    assert not list(out.glob("tmp-save-*"))


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """fault: SIGTERM to rank 1 alone (one node preempted; the launcher and rank 0 are not signalled)
    does: rank 0 learns it through the stop agreement; both ranks stop after the same step, within 2 steps of the signal, save a checkpoint and exit; ds-tp exits 75
    lost: nothing: the checkpoint is the step the job stopped at"""
    out = tmp_path / "run"
    common = [*RUN, "--output-dir", str(out), "--dataset-prepared-path", str(tmp_path / "prep")]
    code, log, sent = _signal_at_step(tmp_path, common, out, 3, rank=1)
    assert code == 75, log[-3000:]
    stopped = json.loads((out / "ds_tp" / "preempted.json").read_text())
    assert stopped["signal"] is None or stopped["signal"] == "SIGTERM"
    assert sent <= stopped["step"] <= sent + 2 and not stopped["why_not_saved"]
    checkpoint = out / f"checkpoint-{stopped['step']}"
    assert (checkpoint / "ds_tp_state.json").is_file()
    assert sorted(p.name for p in checkpoint.glob("rng_state_*")) == ["rng_state_0.pt", "rng_state_1.pt"]
    assert max(r["step"] for r in metrics(out)) == stopped["step"]
