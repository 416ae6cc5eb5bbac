import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CARD = EXAMPLES / "card"

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

# The fuzz tests explore new inputs on every local run (and keep failures in .hypothesis/); under CI
# (CI=true) they replay one fixed sequence, so a landing never depends on the draw.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")


@pytest.fixture
def write_config(tmp_path):
    """Write YAML text to a file and return its path."""
    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path
    return write


MINIMAL = """\
base_model: some/model
datasets:
  - path: data.jsonl
    type: alpaca
learning_rate: 2e-5
micro_batch_size: 1
gradient_accumulation_steps: 4
"""


def assert_cli_skips_heavy_imports(args: list[str]) -> None:
    """Run `ds-tp ARGS` in a fresh interpreter; fail if torch/deepspeed/transformers/datasets got imported."""
    code = ("import sys; from click.testing import CliRunner; from ds_tp.cli import main; "
            f"r = CliRunner().invoke(main, {args!r}); "
            "assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'deepspeed', 'transformers', 'datasets') if m in sys.modules]; "
            "assert not heavy, heavy")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
