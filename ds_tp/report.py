"""`ds-tp report`: what runs' metrics.jsonl say, as a few lines of text and one picture of the curves.

metrics.jsonl (train/metrics.py MetricsLog) holds one JSON object per line: a training row per logging
step (step, loss, lr, grad_norm, tokens_per_s, peak_mem_gib, mfu, ...; the cumulative `tokens` and
`train_s` in files written since they were added; rewards/* for preference tuning) and an eval row per
evaluation (eval_loss, eval_rewards/*). A half-written line (a run killed mid-write) is skipped.
matplotlib is needed only for the picture (the `plot` extra), and imported only there.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

from ds_tp.errors import UserError

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"  # the picture's usual name in a run's output_dir
WIDTH_PX, HEIGHT_PX, DPI = 1200, 800, 100
NEEDS_MATPLOTLIB = "the training-curves picture needs matplotlib: pip install 'ds-tp[plot]'"

# One panel each: (title, the training figure drawn solid, the eval figure drawn dashed with markers).
PANELS = (("loss", "loss", "eval_loss"), ("learning rate", "lr", None), ("grad norm", "grad_norm", None),
          ("tokens/s (all devices)", "tokens_per_s", None))
REWARD_PANEL = ("reward accuracy", "rewards/accuracies", "eval_rewards/accuracies")


# ---- reading ---------------------------------------------------------------------------------------------

def load_runs(dirs: list[Path]) -> list[tuple[str, list[dict]]]:
    """(label, rows) per output_dir, in the order given. A missing folder or metrics file is a UserError."""
    return [(label, read_rows(Path(d))) for label, d in zip(run_labels(dirs), dirs)]


def run_labels(dirs: list[Path]) -> list[str]:
    """The folders' names; equal names get their parent folder's in front, the same folder twice a number."""
    paths = [Path(os.path.abspath(d)) for d in dirs]
    names = [p.name or str(p) for p in paths]
    labels = [f"{p.parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]
    labels = [str(p) if labels.count(label) > 1 else label for p, label in zip(paths, labels)]
    seen: Counter = Counter()
    unique = []
    for label in labels:
        seen[label] += 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def read_rows(output_dir: Path) -> list[dict]:
    """The complete rows of output_dir/metrics.jsonl, in file order."""
    if not output_dir.is_dir():
        what = "is not a folder" if output_dir.exists() else "no such folder"
        raise UserError(f"{what} (expected a ds-tp train output_dir)", where=str(output_dir))
    path = output_dir / METRICS_FILE
    if not path.is_file():
        raise UserError("missing: this output_dir has no logged training step", where=str(path))
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"cannot be read: {e.strerror or e}", where=str(path)) from None
    rows = [row for row in map(_parse, text.splitlines()) if row is not None]
    if not rows:
        raise UserError("empty: it holds no complete metrics row", where=str(path))
    return rows


def _parse(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:  # a half-written last line
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def _num(value) -> float | None:
    """A finite number, or None (absent, null, NaN, inf, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _last(rows: list[dict], key: str) -> float | None:
    values = [v for v in (_num(r.get(key)) for r in rows) if v is not None]
    return values[-1] if values else None


# ---- summary ---------------------------------------------------------------------------------------------

def summary(rows: list[dict]) -> dict:
    """The figures of one run; None where the rows do not have them (e.g. tokens in older files)."""
    train = [r for r in rows if _num(r.get("loss")) is not None]
    evals = [r for r in rows if _num(r.get("eval_loss")) is not None]
    tokens, train_s = _last(train, "tokens"), _last(train, "train_s")
    mems = [v for v in (_num(r.get("peak_mem_gib")) for r in rows) if v is not None]
    return {"steps": max((r["step"] for r in rows), default=0),
            "total_steps": rows[-1].get("total_steps") if rows else None,
            **_points(train, "loss", "loss"), **_points(evals, "eval_loss", "eval_loss"),
            "tokens": None if tokens is None else int(tokens), "train_s": train_s,
            "tokens_per_s": tokens / train_s if tokens is not None and train_s else None,
            "peak_mem_gib": max(mems) if mems else None, "mfu": _last(train, "mfu"),
            "skipped_steps": int(_last(train, "skipped_steps") or 0),
            "reward_accuracy": _last(train, "rewards/accuracies"),
            "eval_reward_accuracy": _last(evals, "eval_rewards/accuracies")}


def _points(rows: list[dict], key: str, name: str) -> dict:
    """first_/last_/best_<name> (best: the lowest, the earliest of equals) and their _step; None without rows."""
    picks = {"first": rows[0], "last": rows[-1], "best": min(rows, key=lambda r: r[key])} if rows else {}
    out: dict = {}
    for which in ("first", "last", "best"):
        row = picks.get(which)
        out[f"{which}_{name}"] = float(row[key]) if row else None
        out[f"{which}_{name}_step"] = row["step"] if row else None
    return out


def summary_text(label: str, rows: list[dict]) -> str:
    """A few lines: progress and throughput, loss, eval loss, memory and MFU, reward accuracy."""
    s = summary(rows)
    rate = "n/a" if s["tokens_per_s"] is None else f"{s['tokens_per_s']:,.0f}"
    lines = [f"{label}: step {s['steps']}/{s['total_steps']} | tokens {_count(s['tokens'])} | "
             f"training time {_duration(s['train_s'])} | {rate} tokens/s"]
    if s["first_loss"] is not None:
        lines.append(f"  loss {s['first_loss']:.4f} (step {s['first_loss_step']}) -> {s['last_loss']:.4f} "
                     f"(step {s['last_loss_step']}), best {s['best_loss']:.4f} (step {s['best_loss_step']})")
    if s["best_eval_loss"] is not None:
        lines.append(f"  eval_loss best {s['best_eval_loss']:.4f} (step {s['best_eval_loss_step']}), "
                     f"last {s['last_eval_loss']:.4f} (step {s['last_eval_loss_step']})")
    mem = "n/a" if s["peak_mem_gib"] is None else f"{s['peak_mem_gib']:.2f} GiB"
    mfu = "n/a" if s["mfu"] is None else f"{100 * s['mfu']:.1f}%"
    skipped = f" | {s['skipped_steps']} non-finite step(s) skipped" if s["skipped_steps"] else ""
    lines.append(f"  peak memory {mem} | last MFU {mfu}{skipped}")
    if s["reward_accuracy"] is not None or s["eval_reward_accuracy"] is not None:
        lines.append(f"  reward accuracy {_fixed(s['reward_accuracy'])} (eval {_fixed(s['eval_reward_accuracy'])})")
    return "\n".join(lines)


def _fixed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _count(n: int | None) -> str:
    if n is None:
        return "n/a"
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = round(seconds)
    h, m = s // 3600, s % 3600 // 60
    return f"{h}h {m:02d}m" if h else f"{m}m {s % 60:02d}s" if m else f"{seconds:.1f}s"


# ---- the picture -----------------------------------------------------------------------------------------

def write_curves(runs: list[tuple[str, list[dict]]], path: Path) -> Path:
    """One PNG of WIDTH_PX x HEIGHT_PX, the runs overlaid one colour each; written to a temp file, renamed."""
    fig = _figure(runs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _figure(runs: list[tuple[str, list[dict]]]):
    """Panels on two rows: loss (+ eval), learning rate, grad norm, tokens/s, and reward accuracy if any."""
    try:  # Agg, on its own canvas: no pyplot, no display, no global backend switch
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(NEEDS_MATPLOTLIB) from None
    preference = any("rewards/accuracies" in r or "eval_rewards/accuracies" in r for _, rows in runs for r in rows)
    panels = PANELS + ((REWARD_PANEL,) if preference else ())
    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, math.ceil(len(panels) / 2), squeeze=False).flatten()
    for ax, panel in zip(axes, panels):
        _panel(ax, panel, runs)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("training curves: " + ", ".join(label for label, _ in runs))
    _legend(fig, runs)
    return fig


def _panel(ax, panel: tuple, runs: list[tuple[str, list[dict]]]) -> None:
    title, key, eval_key = panel
    for i, (label, rows) in enumerate(runs):
        colour = _colour(i)
        _plot(ax, rows, key, color=colour, linewidth=1.5)
        if eval_key:
            _plot(ax, rows, eval_key, color=colour, linewidth=1.2, linestyle="--", marker="o", markersize=4)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if not ax.lines:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")


def _plot(ax, rows: list[dict], key: str, **style) -> None:
    """The finite values of `key` against step (null or NaN grad norms are left out)."""
    points = [(r["step"], v) for r in rows for v in [_num(r.get(key))] if v is not None]
    if points:
        ax.plot([x for x, _ in points], [y for _, y in points], **style)


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _legend(fig, runs: list[tuple[str, list[dict]]]) -> None:
    """One entry per run (its colour), and what the dashed line means, below the panels."""
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=_colour(i), linewidth=2, label=label) for i, (label, _) in enumerate(runs)]
    if any("eval_loss" in r for _, rows in runs for r in rows):
        handles.append(Line2D([], [], color="grey", linestyle="--", marker="o", markersize=4, label="eval"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
