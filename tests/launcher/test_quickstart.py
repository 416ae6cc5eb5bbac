"""The README's main job: the embedded quickstart, default config, real deepspeed launcher, 2 CPU ranks."""
from scripts.check_quickstart import figures
from tests.conftest import EXAMPLES
from tests.launcher.test_train_cli import ds_tp


def test_quickstart_learns(tmp_path):
    out = tmp_path / "quickstart"
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", "--output-dir", out, "--dataset-prepared-path",
                      tmp_path / "prep", timeout=600)
    assert code == 0, log[-4000:]
    assert "dp_replicate(1) * dp_shard(2) * tp(1) * cp(1) = 2" in log and "ZeRO stage 3" in log
    f = figures(out)
    assert f["last_loss"] < 0.8 * f["first_loss"], f
    assert f["accuracy_after"] > f["accuracy_before"], f
