"""`ds-tp train` never loses a previous run: --dry-run and --print-command change nothing in output_dir,
cheap checks come before data preparation, and --overwrite gives the old run back if the new one never
starts. The real command in a subprocess (tests/launcher/test_train_cli.py's helper)."""
import hashlib
import shutil
from pathlib import Path

from ds_tp.assets import resolve_builtin_model
from tests.conftest import EXAMPLES
from tests.launcher.test_train_cli import SHORT, ds_tp

QUICKSTART = EXAMPLES / "quickstart.yaml"


def finished_run(out: Path) -> dict:
    """A folder as a completed run leaves it (contents are the user's, so any bytes do)."""
    files = {"model.safetensors": b"weights", "config.json": b"{}", "metrics.jsonl": b'{"step": 1}\n',
             "checkpoint-2/ds_tp_state.json": b'{"step": 2}', "checkpoint-2/mp_rank_00_model_states.pt": b"x",
             "ds_tp/run.json": b"{}", "latest": b"checkpoint-2", "notes.txt": b"the user's own file"}
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return snapshot(out)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dry_run_and_print_command_leave_a_finished_run_alone(tmp_path):
    """fault: `ds-tp train --overwrite --dry-run` (then --print-command) on the output_dir of a finished run
    does: the dry run prints the plan and writes nothing there; --print-command with --overwrite is refused in one line
    lost: nothing: every file of the finished run is byte-identical, and nothing was added"""
    out = tmp_path / "run"
    before = finished_run(out)
    common = [*SHORT, "--output-dir", out, "--dataset-prepared-path", tmp_path / "prep", "--overwrite"]
    code, log = ds_tp("train", QUICKSTART, *common, "--dry-run")
    assert code == 0, log[-3000:]
    assert "dry run: nothing written in" in log and "deepspeed.launcher.runner" in log
    assert snapshot(out) == before
    code, log = ds_tp("train", QUICKSTART, *common, "--print-command")
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "--print-command with --overwrite" in errors[0], log[-3000:]
    assert "Traceback" not in log
    assert snapshot(out) == before


def test_launch_flags_are_checked_before_the_data_is_prepared(tmp_path):
    """fault: per-node launch (--num-machines 2 --machine-rank 0) without --main-process-ip
    does: refused in one line naming --main-process-ip, before any data is prepared (node 1 would wait on its own 127.0.0.1 for 30 min)
    lost: nothing (no dataset cache, no run files)"""
    prep, out = tmp_path / "prep", tmp_path / "run"
    code, log = ds_tp("train", QUICKSTART, *SHORT, "--num-machines", "2", "--machine-rank", "0",
                      "--main-process-port", "29999", "--output-dir", out, "--dataset-prepared-path", prep)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "--main-process-ip" in errors[0], log[-3000:]
    assert not prep.exists() and not out.exists()


def test_overwrite_puts_the_old_run_back_when_the_new_one_never_starts(tmp_path):
    """fault: --overwrite, and the new run dies before its first step (its model weights are unreadable)
    does: the old run waits in replaced-run-<time>/ during the launch; the launch fails, the new run's files are removed and the old ones renamed back
    lost: nothing: every file of the old run is byte-identical, no replaced-run folder is left, and the failed attempt's logs are kept in ds_tp/logs/failed-<time>/"""
    model = tmp_path / "model"
    shutil.copytree(resolve_builtin_model("builtin:tiny-llama"), model)
    (model / "model.safetensors").write_bytes(b"not safetensors")  # prepare reads config + tokenizer only
    out = tmp_path / "run"
    before = finished_run(out)
    code, log = ds_tp("train", QUICKSTART, *SHORT, "--base-model", model, "--dp-shard-size", "1",
                      "--num-processes", "1", "--output-dir", out, "--dataset-prepared-path", tmp_path / "prep",
                      "--overwrite")
    assert code != 0, log[-3000:]
    assert "the previous run is in" in log and "is back in place" in log, log[-3000:]
    after = snapshot(out)  # the old run byte-identical; the failed attempt's logs kept beside its own
    failed = {k for k in after if k.startswith("ds_tp/logs/failed-")}
    assert {k: v for k, v in after.items() if k not in failed} == before
    assert any(k.endswith("/rank-0.log") for k in failed), sorted(after)
    assert "every rank's output is in" in log and "ds_tp/logs/failed-" in log, log[-3000:]
    assert "safetensors" in log.split("the end of", 1)[1], log[-3000:]  # the failed rank's own error, shown
    assert not list(out.glob("replaced-run-*"))
