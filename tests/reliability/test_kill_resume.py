"""kill -9 of the whole job (ds-tp, launcher, ranks: one process group), then auto-resume: the losses
logged after the resume equal an uninterrupted run's, bitwise on CPU, and metrics.jsonl reads as one run."""
from ds_tp.runfiles import existing_checkpoints
from tests.conftest import EXAMPLES
from tests.launcher.test_train_cli import ds_tp
from tests.reliability.job import metrics, survivors, training_job, wait_for

RUN = ["--max-steps", "10", "--save-steps", "2", "--logging-steps", "1", "--sequence-len", "64"]


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
    with training_job([*common, "--output-dir", out], tmp_path / "killed.log") as job:
        wait_for(job, lambda: any(r.get("step") == 5 for r in metrics(out)), tmp_path / "killed.log")
        assert [p.name for p in existing_checkpoints(out)][-1] == "checkpoint-4"
    assert not survivors(out), "processes survived the group kill"

    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", *common, "--output-dir", out,
                      "--auto-resume-from-checkpoints")
    assert code == 0, log[-3000:]
    assert f"resumed from {(out / 'checkpoint-4').resolve()} at step 4" in log, log[-3000:]
    rows = metrics(out)
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, 11)), steps  # cut back to the checkpoint, then continued: one clean run
    assert {r["step"]: r["loss"] for r in rows if r["step"] > 4} == {s: reference[s] for s in range(5, 11)}
