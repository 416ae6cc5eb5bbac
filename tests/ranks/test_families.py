"""The family matrix: tiny random models of the families Axolotl's examples train (builtin:tiny-<family>,
built locally from each family's transformers config), dense and MoE, on dp_shard 2, tp 2 and cp 2,
through the same code path as users. Every cell either trains with the one-process losses (within 1e-5
per step, SGD, 4 steps) and gradient norms, or is refused before any rank starts with one line naming
the family, the layout key and why. A failure after launch is a bug. docs/families.md holds the result
(`python scripts/family_matrix.py` writes it).

The one-process, dp_shard 2 and tp 2 runs share one spawned process group per layout (the worker runs
once per run file), so they pay the interpreter, torch and DeepSpeed start-up once; each cp 2 run has its
own (Ulysses sets its groups up once per process).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from ds_tp.errors import UserError
from ds_tp.families import TINY_FAMILIES
from tests.ranks.hf_reference import ds_tp_rows, prepare, train_all

FAMILIES = ["llama", *TINY_FAMILIES]
SGD = {"optimizer": "sgd", "lr_scheduler": "constant", "learning_rate": 0.5, "warmup_steps": 0, "micro_batch_size": 1,
       "sequence_len": 64, "max_steps": 4, "logging_steps": 1, "weight_decay": 0.0}
LAYOUTS = {
    "one": {"dp_shard_size": 1, "gradient_accumulation_steps": 2},
    "dp_shard2": {"dp_shard_size": 2, "gradient_accumulation_steps": 1},
    "tp2": {"dp_shard_size": 1, "tensor_parallel_size": 2, "gradient_accumulation_steps": 2},
    "cp2": {"dp_shard_size": 1, "context_parallel_size": 2, "gradient_accumulation_steps": 2},
}
# The cells refused before launch, and a word of each reason: anything else refused, or any of these
# accepted, fails the matrix.
REFUSED = {
    ("gemma2", "cp2"): "Ulysses",  # eager attention only on CPU (flash attention on GPUs)
    ("gpt-oss", "cp2"): "Ulysses",
    ("gpt-oss", "tp2"): "attention sinks",
}


def base_model(family: str) -> str:
    return "builtin:tiny-llama" if family == "llama" else f"builtin:tiny-{family}"


# the families whose fused gate_up_proj AutoTP splits sub-block by sub-block: their runs also save a checkpoint,
# which `ds-tp export` must join gate slices first, then up slices
FUSED = ("phi3", "glm4")


def config(family: str, layout: str) -> dict:
    from tests.ranks.hf_reference import BASE
    return {**BASE, **SGD, **LAYOUTS[layout], "base_model": base_model(family),
            **({"save_steps": 2} if family in FUSED else {})}


def prepare_cells(folder: Path) -> dict:
    """(family, layout) -> the prepared run file, or the UserError that refused it before launch."""
    cells: dict = {}
    for family in FAMILIES:
        for layout in LAYOUTS:
            try:
                cells[family, layout] = prepare(folder / family, layout, config(family, layout), folder / "prepared",
                                                1 if layout == "one" else 2)
            except UserError as exc:
                cells[family, layout] = exc
    return cells


def train_cells(cells: dict, around=lambda layout, fn: fn()) -> None:
    """Train every prepared cell; around(layout, fn) wraps each layout's training (scripts capture logs)."""
    for layout, world in (("one", 1), ("dp_shard2", 2), ("tp2", 2)):
        runs = [cells[f, layout] for f in FAMILIES if isinstance(cells[f, layout], Path)]
        around(layout, lambda: train_all(runs, timeout=1200, world=world))
    for family in FAMILIES:  # Ulysses initialises its groups once per process: one process group per run
        if isinstance(cells[family, "cp2"], Path):
            train_all([cells[family, "cp2"]], timeout=300, world=2)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict:
    """(family, layout) -> the run file, or the UserError that refused it before launch."""
    cells = prepare_cells(tmp_path_factory.mktemp("families"))
    train_cells(cells)
    return cells


def norms(rows: list[dict]) -> list:
    return [r["grad_norm"] for r in rows]


@pytest.mark.parametrize("layout", ["dp_shard2", "tp2", "cp2"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_like_one_process_or_is_refused_before_launch(matrix, family, layout):
    cell, reference = matrix[family, layout], matrix[family, "one"]
    assert isinstance(reference, Path), f"{family} on one process was refused: {reference}"
    if (family, layout) in REFUSED:
        assert isinstance(cell, UserError), f"{family} {layout} ran, but the matrix expects it refused"
        [problem] = cell.problems
        key = {"tp2": "tensor_parallel_size", "cp2": "context_parallel_size"}[layout]
        assert problem.key == key and REFUSED[family, layout] in problem.message, str(problem)
        return
    assert isinstance(cell, Path), f"{family} {layout} was refused: {cell}"
    ours, _ = ds_tp_rows(cell)
    ref, _ = ds_tp_rows(reference)
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in ref], abs=1e-5)
    assert ref[-1]["loss"] < ref[0]["loss"]  # it trained
    pairs = [(a, b) for a, b in zip(norms(ours), norms(ref)) if a is not None and b is not None]
    assert [a for a, _ in pairs] == pytest.approx([b for _, b in pairs], rel=1e-4)


@pytest.mark.parametrize("family", FUSED)
def test_export_of_a_tp2_checkpoint_equals_one_process(matrix, family, tmp_path):
    """`ds-tp export` of the tp 2 run's step-2 checkpoint (gate_up_proj held as each rank's gate slice then up
    slice) loads with the weights of the one-process run's step-2 checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    from ds_tp.export_checkpoint import export_checkpoint
    from ds_tp.runfiles import PreparedRun
    states = {}
    for layout in ("one", "tp2"):
        assert isinstance(matrix[family, layout], Path), matrix[family, layout]
        export_checkpoint(Path(PreparedRun.read(matrix[family, layout]).output_dir) / "checkpoint-2", tmp_path / layout)
        states[layout] = AutoModelForCausalLM.from_pretrained(tmp_path / layout).state_dict()
    assert states["one"].keys() == states["tp2"].keys()
    fused = [k for k in states["one"] if k.endswith("gate_up_proj.weight")]
    assert fused, "no fused gate_up_proj in this family"
    for name, want in states["one"].items():
        torch.testing.assert_close(states["tp2"][name], want, atol=1e-5, rtol=1e-5, msg=name)


def test_the_matrix_trains_at_least_nine_in_ten_cells(matrix):
    cells = [(f, lay) for f in FAMILIES for lay in ("dp_shard2", "tp2", "cp2")]
    trained = [c for c in cells if isinstance(matrix[c], Path)]
    assert len(FAMILIES) >= 12 and len(trained) >= 0.9 * len(cells), (len(trained), len(cells))
