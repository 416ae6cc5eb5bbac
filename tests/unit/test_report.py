"""`ds-tp report`: metrics.jsonl read back (half-written last line skipped), the summary figures, and the
training-curves PNG (its size, and each run's colour drawn in the loss panel)."""
import json
import math
import sys

import pytest

from ds_tp.errors import UserError
from ds_tp.report import (
    HEIGHT_PX,
    NEEDS_MATPLOTLIB,
    WIDTH_PX,
    load_runs,
    run_labels,
    summary,
    summary_text,
    write_curves,
)

STEPS, LOG_EVERY, EVAL_EVERY = 40, 2, 10
TOKENS_PER_STEP, SECONDS_PER_STEP = 512, 0.25
EVAL_LOSSES = {10: 1.9, 20: 1.5, 30: 1.3, 40: 1.35}  # best at step 30


def loss_at(step: int, scale: float = 1.0) -> float:
    """Falling loss with an uptick on the last step, so the best and the last differ."""
    return scale * 3.0 * 0.97 ** step + (0.2 if step == STEPS else 0.0)


def lr_at(step: int) -> float:
    """Warmup over 5 steps, then cosine to zero."""
    if step <= 5:
        return 2e-5 * step / 5
    return 1e-5 * (1 + math.cos(math.pi * (step - 5) / (STEPS - 5)))


def train_row(step: int, scale: float, with_totals: bool, preference: bool) -> dict:
    row = {"step": step, "total_steps": STEPS, "loss": loss_at(step, scale), "lr": scale * lr_at(step),
           "grad_norm": math.nan if step == 8 else scale / step ** 0.5, "tokens_per_s": scale * 2000.0 + step,
           "tokens_per_s_per_device": 250.0 + step, "peak_mem_gib": 10.0 + (0.5 if step == 20 else 0.0),
           "mfu": None if step < 4 else 0.3 + step / 1000, "epoch": step / STEPS, "skipped_steps": 0}
    if with_totals:
        row |= {"tokens": TOKENS_PER_STEP * step, "train_s": SECONDS_PER_STEP * step}
    if preference:
        row |= {"rewards/accuracies": 0.5 + step / 100, "rewards/margins": step / 50}
    return row


def eval_row(step: int, scale: float, preference: bool) -> dict:
    row = {"step": step, "total_steps": STEPS, "eval_loss": scale * EVAL_LOSSES[step]}
    if preference:
        row |= {"eval_rewards/accuracies": 0.6 + step / 200, "eval_rewards/margins": step / 60}
    return row


def write_run(folder, scale=1.0, with_totals=True, preference=False, half_line=True):
    """A run's output_dir: rows every LOG_EVERY steps, eval rows every EVAL_EVERY, a torn last line."""
    folder.mkdir(parents=True)
    rows = []
    for step in range(LOG_EVERY, STEPS + 1, LOG_EVERY):
        rows.append(train_row(step, scale, with_totals, preference))
        if step % EVAL_EVERY == 0:
            rows.append(eval_row(step, scale, preference))
    text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows)
    if half_line:
        text += json.dumps(train_row(STEPS + 2, scale, with_totals, preference))[:37]
    (folder / "metrics.jsonl").write_text(text, encoding="utf-8")
    return folder


# ---- reading -------------------------------------------------------------------------------------------

def test_rows_are_read_and_the_half_written_last_line_skipped(tmp_path):
    [(label, rows)] = load_runs([write_run(tmp_path / "run-a")])
    assert label == "run-a"
    assert len(rows) == STEPS // LOG_EVERY + len(EVAL_LOSSES)
    assert rows[-1] == {"step": 40, "total_steps": STEPS, "eval_loss": 1.35}
    assert math.isnan(rows[3]["grad_norm"])  # step 8


def test_missing_folder_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match="no such folder") as e:
        load_runs([tmp_path / "nope"])
    assert str(tmp_path / "nope") in str(e.value) and "\n" not in str(e.value)


def test_missing_metrics_file_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="missing") as e:
        load_runs([tmp_path / "run"])
    assert str(tmp_path / "run" / "metrics.jsonl") in str(e.value)


@pytest.mark.parametrize("text", ["", "\n\n", '{"step": 2, "total_st'])
def test_empty_metrics_file_is_a_user_error_naming_it(tmp_path, text):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match="empty") as e:
        load_runs([tmp_path / "run"])
    assert str(tmp_path / "run" / "metrics.jsonl") in str(e.value) and "\n" not in str(e.value)


def test_equal_folder_names_are_told_apart_by_their_parent(tmp_path):
    assert run_labels([tmp_path / "a" / "out", tmp_path / "b" / "out", tmp_path / "c"]) == ["a/out", "b/out", "c"]
    assert run_labels([tmp_path / "c", tmp_path / "c"]) == [str(tmp_path / "c"), f"{tmp_path / 'c'} (2)"]


# ---- summary -------------------------------------------------------------------------------------------

def test_summary_figures(tmp_path):
    [(_, rows)] = load_runs([write_run(tmp_path / "run")])
    s = summary(rows)
    assert (s["steps"], s["total_steps"]) == (STEPS, STEPS)
    assert (s["first_loss"], s["first_loss_step"]) == (loss_at(2), 2)
    assert (s["last_loss"], s["last_loss_step"]) == (loss_at(40), 40)
    assert (s["best_loss"], s["best_loss_step"]) == (loss_at(38), 38)
    assert (s["best_eval_loss"], s["best_eval_loss_step"]) == (1.3, 30)
    assert (s["last_eval_loss"], s["last_eval_loss_step"]) == (1.35, 40)
    assert s["tokens"] == TOKENS_PER_STEP * STEPS and s["train_s"] == SECONDS_PER_STEP * STEPS
    assert s["tokens_per_s"] == TOKENS_PER_STEP / SECONDS_PER_STEP
    assert s["peak_mem_gib"] == 10.5 and s["mfu"] == 0.3 + 40 / 1000
    assert s["reward_accuracy"] is None and s["eval_reward_accuracy"] is None


def test_summary_text(tmp_path):
    [(label, rows)] = load_runs([write_run(tmp_path / "run")])
    text = summary_text(label, rows)
    assert text.splitlines()[0] == "run: step 40/40 | tokens 20.48k | training time 10.0s | 2,048 tokens/s"
    assert f"loss {loss_at(2):.4f} (step 2) -> {loss_at(40):.4f} (step 40), best {loss_at(38):.4f} (step 38)" in text
    assert "eval_loss best 1.3000 (step 30), last 1.3500 (step 40)" in text
    assert "peak memory 10.50 GiB | last MFU 34.0%" in text
    assert "reward" not in text


def test_older_files_without_tokens_say_not_available(tmp_path):
    [(label, rows)] = load_runs([write_run(tmp_path / "old", with_totals=False)])
    s = summary(rows)
    assert s["tokens"] is None and s["train_s"] is None and s["tokens_per_s"] is None
    assert summary_text(label, rows).splitlines()[0] == (
        "old: step 40/40 | tokens n/a | training time n/a | n/a tokens/s")


def test_preference_run_reports_the_final_reward_accuracy(tmp_path):
    [(label, rows)] = load_runs([write_run(tmp_path / "dpo", preference=True)])
    s = summary(rows)
    assert s["reward_accuracy"] == 0.5 + 40 / 100 and s["eval_reward_accuracy"] == 0.6 + 40 / 200
    assert "reward accuracy 0.900 (eval 0.800)" in summary_text(label, rows)


# ---- the picture ---------------------------------------------------------------------------------------

def read_png(path):
    image = pytest.importorskip("matplotlib.image")
    return image.imread(str(path))[:, :, :3]  # RGBA floats in [0, 1]


def colour_pixels(region, name: str) -> int:
    """How many pixels of the region have (within rounding) the matplotlib colour `name`."""
    from matplotlib.colors import to_rgb
    return int((abs(region - to_rgb(name)).max(axis=2) < 0.02).sum())


def loss_panel(pixels, columns: int):
    """The inside of the top-left panel (below the title, right of the tick labels): only the curves are coloured."""
    h, w = pixels.shape[:2]
    return pixels[int(0.10 * h):int(0.45 * h), int(0.06 * w):int(0.95 * w / columns)]


def test_one_run_picture(tmp_path):
    pytest.importorskip("matplotlib")
    runs = load_runs([write_run(tmp_path / "run")])
    path = write_curves(runs, tmp_path / "pics" / "curves.png")
    assert path == tmp_path / "pics" / "curves.png" and sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]
    pixels = read_png(path)
    assert pixels.shape[:2] == (HEIGHT_PX, WIDTH_PX) == (800, 1200)
    assert (pixels < 0.95).any(axis=2).mean() > 0.03  # not blank: lines, axes and text
    assert colour_pixels(loss_panel(pixels, 2), "C0") > 100
    assert colour_pixels(loss_panel(pixels, 2), "C1") == 0


def test_two_runs_overlay_in_two_colours(tmp_path):
    pytest.importorskip("matplotlib")
    runs = load_runs([write_run(tmp_path / "a" / "out"), write_run(tmp_path / "b" / "out", scale=0.6)])
    assert [label for label, _ in runs] == ["a/out", "b/out"]
    region = loss_panel(read_png(write_curves(runs, tmp_path / "curves.png")), 2)
    assert colour_pixels(region, "C0") > 100 and colour_pixels(region, "C1") > 100


def test_preference_runs_get_a_reward_panel(tmp_path):
    pytest.importorskip("matplotlib")
    runs = load_runs([write_run(tmp_path / "dpo", preference=True)])
    pixels = read_png(write_curves(runs, tmp_path / "curves.png"))
    assert pixels.shape[:2] == (800, 1200)
    h, w = pixels.shape[:2]
    reward_panel = pixels[int(0.6 * h):int(0.9 * h), int(0.40 * w):int(0.62 * w)]  # bottom middle of 3 columns
    assert colour_pixels(reward_panel, "C0") > 50
    assert colour_pixels(loss_panel(pixels, 3), "C0") > 100
    sixth_slot = pixels[int(0.55 * h):int(0.92 * h), int(0.70 * w):int(0.98 * w)]  # five panels on 2 x 3
    assert not (sixth_slot < 0.95).any()


def test_the_picture_replaces_an_older_one(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    write_curves(load_runs([write_run(tmp_path / "run")]), path)
    assert path.read_bytes().startswith(b"\x89PNG") and [p.name for p in tmp_path.iterdir() if p.is_file()] == [
        "curves.png"]


def test_a_failed_write_leaves_the_older_picture_whole(tmp_path, monkeypatch):
    figure = pytest.importorskip("matplotlib.figure")

    def torn_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG torn")
        raise OSError("disk full")

    monkeypatch.setattr(figure.Figure, "savefig", torn_savefig)
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")
    runs = load_runs([write_run(tmp_path / "run")])
    with pytest.raises(OSError, match="disk full"):
        write_curves(runs, path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir() if p.is_file()] == ["curves.png"]


def test_without_matplotlib_the_picture_is_a_user_error(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    runs = load_runs([write_run(tmp_path / "run")])
    with pytest.raises(UserError) as e:
        write_curves(runs, tmp_path / "curves.png")
    assert str(e.value) == NEEDS_MATPLOTLIB
    assert not (tmp_path / "curves.png").exists()
