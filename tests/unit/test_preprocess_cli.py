"""`ds-tp preprocess` fills the prepared-data cache; the second call is a hit."""
from click.testing import CliRunner

from ds_tp.cli import main
from tests.conftest import EXAMPLES


def test_preprocess_then_cache_hit(tmp_path):
    args = ["preprocess", str(EXAMPLES / "quickstart.yaml"), "--dataset-prepared-path", str(tmp_path / "prep")]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.output.startswith("prepared: ") and "train rows" in first.output
    second = CliRunner().invoke(main, args)
    assert second.output.startswith("already cached: ")
    assert first.output.split("->")[1] == second.output.split("->")[1]
