"""The installed command, as a user runs it: stdout only JSON, one line per error, exit code 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CARD, MINIMAL, ROOT, assert_cli_skips_heavy_imports

DS_TP = str(Path(sys.executable).parent / "ds-tp")  # by full path, as from a venv that is not activated


def run(*args, cwd=ROOT, env=None):
    env = dict(os.environ, **(env or {}))
    env["PATH"] = "/usr/bin:/bin"  # the venv is not on PATH: ds-tp must not need it
    return subprocess.run([DS_TP, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_translate_writes_only_json_to_stdout():
    p = run("translate", CARD / "scenario-2.yaml", "--world-size", "16", "--explain")
    assert p.returncode == 0, p.stderr
    config = json.loads(p.stdout)
    assert config["zero_optimization"]["zero_hpz_partition_size"] == 4
    assert "effective batch = micro 1 x gas 8 x world 16 / (tp 2 x cp 1) = 64" in p.stderr
    assert "ZeRO++ hpZ" in p.stderr and "tp groups: [[0, 1], [2, 3]," in p.stderr  # the explain table
    assert "ZeRO stage 3: dp_shard_size 4" in p.stderr and "hpZ partition 4" in p.stderr  # the resolved run


def test_translate_defaults_to_the_layout_product(tmp_path):
    out = tmp_path / "ds.json"
    p = run("translate", CARD / "scenario-1b.yaml", "-o", out, env={"HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0 and p.stdout == ""
    assert json.loads(out.read_text())["tensor_parallel"]["autotp_size"] == 2


def test_wrong_world_size_and_typo_exit_2(tmp_path):
    p = run("translate", CARD / "scenario-1b.yaml", "--world-size", "6")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == (f"error: {CARD / 'scenario-1b.yaml'}:2:1: dp_shard_size: dp_replicate(1) * "
                                "dp_shard(4) * tp(2) * cp(1) = 8 != world 6 (the product of the sizes must equal "
                                "the number of processes (6))")
    bad = tmp_path / "typo.yaml"
    bad.write_text(MINIMAL + "micro_batch_sise: 2\n")
    p = run("validate", bad)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"{bad}:8:1: micro_batch_sise: unknown key (did you mean 'micro_batch_size'?)" in p.stderr


def test_validate_ok_with_notices():
    p = run("validate", CARD / "minimal-tp.yaml", "--num-processes", "2")
    assert p.returncode == 0, p.stderr
    assert "valid; layout dp_replicate(1) * dp_shard(1) * tp(2) * cp(1) = 2" in p.stdout
    assert "notice:" in p.stderr and "learning_rate" in p.stderr


def test_config_schema_prints_the_schema():
    p = run("config-schema")
    assert p.returncode == 0
    assert json.loads(p.stdout)["$schema"].endswith("2020-12/schema")


def test_front_end_does_not_import_torch():
    assert_cli_skips_heavy_imports(['translate', str(CARD / 'scenario-3.yaml')])


def test_bad_flag_value_is_exit_2():
    p = run("translate", CARD / "scenario-1b.yaml", "--world-size", "zero")
    assert p.returncode == 2 and "Traceback" not in p.stderr
