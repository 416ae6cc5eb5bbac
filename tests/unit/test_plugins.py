"""`plugins:` never imports code a config names, unless the command line allows it."""
from click.testing import CliRunner

from ds_tp.cli import main
from ds_tp.config import load_config
from ds_tp.plugins import CUT_CROSS_ENTROPY, LIGER
from tests.conftest import MINIMAL

PROBE = "tests.fixtures.plugin_probe.ProbePlugin"


def _validate(path, *flags):
    return CliRunner().invoke(main, ["validate", str(path), *flags])


def test_an_unknown_plugin_is_refused_at_its_line(write_config):
    path = write_config(MINIMAL + f"plugins:\n  - {CUT_CROSS_ENTROPY}\n  - evil.module.Plugin\n")
    result = _validate(path)
    assert result.exit_code == 2
    line = [x for x in result.output.splitlines() if "evil.module.Plugin" in x]
    assert len(line) == 1 and f"{path}:" in line[0] and "plugins[1]" in line[0]
    assert "--plugin-module evil.module.Plugin" in line[0] and "Traceback" not in result.output


def test_a_plugin_named_on_the_command_line_is_allowed(write_config):
    path = write_config(MINIMAL + f"plugins:\n  - {PROBE}\n")
    result = _validate(path, "--plugin-module", PROBE)
    assert result.exit_code == 0, result.output
    assert load_config(path, plugin_modules=[PROBE]).plugin_modules == [PROBE]
    assert load_config(write_config(MINIMAL, "plain.yaml"), plugin_modules=[PROBE]).plugin_modules == []


def test_known_plugins_switch_on_the_chunked_loss(write_config):
    cce = load_config(write_config(MINIMAL + f"plugins: [{CUT_CROSS_ENTROPY}]\ncut_cross_entropy: true\n", "a.yaml"))
    assert cce.values["chunked_cross_entropy"] is True
    liger = load_config(write_config(MINIMAL + f"plugins: [{LIGER}]\nliger_rms_norm: true\n"
                                     "liger_fused_linear_cross_entropy: true\n", "b.yaml"))
    assert liger.values["chunked_cross_entropy"] is True
    assert not any("liger" in str(w) for w in liger.warnings)
    off = load_config(write_config(MINIMAL + f"plugins: [{CUT_CROSS_ENTROPY}]\n", "c.yaml"))
    assert not off.values.get("chunked_cross_entropy")


def test_plugin_switches_without_their_plugin_are_warned_about(write_config):
    cfg = load_config(write_config(MINIMAL + "liger_rope: true\ncut_cross_entropy: true\n"))
    text = "\n".join(str(w) for w in cfg.warnings)
    assert "liger_rope: has no effect without plugins" in text and "cut_cross_entropy: has no effect" in text
    assert not cfg.values.get("chunked_cross_entropy")
