"""Run files damaged by a crash (a truncated ds_tp_state.json, a checkpoint folder cut short, a tmp-save-N left by
a kill during save): one line naming the file, and auto-resume falls back to the newest complete checkpoint."""
from click.testing import CliRunner

from ds_tp.cli import main
from ds_tp.config import load_config
from ds_tp.launch.train import resolve_resume
from ds_tp.runfiles import write_state
from tests.conftest import EXAMPLES


def damaged_run(out, layout) -> None:
    saved = {k: getattr(layout, k) for k in ("dp_replicate", "dp_shard", "tp", "cp")}
    for step in (2, 4):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        write_state(out / f"checkpoint-{step}", {"step": step, "layout": saved})
    state = out / "checkpoint-4" / "ds_tp_state.json"
    state.write_text(state.read_text()[:25])  # truncated mid-write
    (out / "checkpoint-6").mkdir()  # DeepSpeed's files only: the state is written last
    (out / "checkpoint-6" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    (out / "tmp-save-8").mkdir()  # a save killed before its rename
    write_state(out / "tmp-save-8", {"step": 8, "layout": saved})


def test_auto_resume_skips_damaged_checkpoints(tmp_path, capsys):
    """fault: the newest checkpoints are damaged: checkpoint-6 without its state, checkpoint-4 with a truncated ds_tp_state.json, and tmp-save-8 left by a kill during save
    does: auto-resume warns in one line naming checkpoint-4's state file and resumes from checkpoint-2; tmp-save-8 and checkpoint-6 are never resumed from
    lost: the steps after checkpoint-2"""
    out = tmp_path / "out"
    cfg = load_config(EXAMPLES / "quickstart.yaml", ["--output-dir", str(out), "--auto-resume-from-checkpoints"], 2)
    damaged_run(out, cfg.layout)
    assert resolve_resume(cfg)[0] == str((out / "checkpoint-2").resolve())
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and str(out / "checkpoint-4" / "ds_tp_state.json") in warned[0], warned


def test_export_of_a_truncated_state_is_one_line(tmp_path):
    """fault: `ds-tp export` of a checkpoint whose ds_tp_state.json is truncated, and of a tmp-save-N folder
    does: exit 2 with one line naming the file (or the folder as incomplete); no traceback
    lost: nothing (nothing is written)"""
    out = tmp_path / "out"
    cfg = load_config(EXAMPLES / "quickstart.yaml", ["--output-dir", str(out)], 2)
    damaged_run(out, cfg.layout)
    for folder, named in (("checkpoint-4", "checkpoint-4/ds_tp_state.json"), ("checkpoint-6", "checkpoint-6")):
        result = CliRunner().invoke(main, ["export", str(out / folder), str(tmp_path / "exported")])
        lines = [x for x in result.output.splitlines() if x.startswith("error:")]
        assert result.exit_code == 2 and len(lines) == 1 and named in lines[0], result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert not (tmp_path / "exported").exists()
