"""Mutated and broken configs never produce a traceback: load_config returns or raises UserError."""
import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ds_tp.config import load_config
from ds_tp.device import cpu_facts
from ds_tp.ds_config import build_ds_config
from ds_tp.errors import UserError
from tests.conftest import CARD

BASE = yaml.safe_load((CARD / "recommended-70b.yaml").read_text())
BASE["datasets"] = [{"path": "tatsu-lab/alpaca", "type": "alpaca"}]
KEYS = sorted(BASE) + ["warmup_steps", "warmup_ratio", "context_parallel_size", "dp_replicate_size", "batch_size",
                       "sample_packing", "deepspeed", "special_tokens", "lr_scheduler", "max_steps", "save_steps",
                       "adapter", "sequence_parallel_degree", "fp16", "attn_implementation", "val_set_size"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                    st.text(string.printable + "é中\u202e", max_size=12), st.sampled_from(["auto", "2e-5", "cosine"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def check(tmp_path, text: str, world) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if isinstance(text, str) else path.write_bytes(text)
    try:
        cfg = load_config(path, (), world)
        build_ds_config(cfg, cpu_facts("fuzz"))
    except UserError as exc:
        assert exc.problems and all(p.where.startswith(str(path)) for p in exc.problems), exc.problems


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(KEYS), values, max_size=4),
       drop=st.lists(st.sampled_from(sorted(BASE)), max_size=3), world=st.sampled_from([None, 1, 2, 8, 16]))
def test_mutated_configs_never_crash(tmp_path, changes, drop, world):
    """fault: 700 generated configs: wrong types, missing and extra keys, huge numbers, NaN, unicode, any world size
    does: load, validate and translate return, or raise UserError whose every line names where and what
    lost: nothing (no traceback, nothing written)"""
    data = {k: v for k, v in BASE.items() if k not in drop}
    data.update(changes)
    check(tmp_path, yaml.safe_dump(data, allow_unicode=True), world)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_arbitrary_files_never_crash(tmp_path, blob):
    """fault: 400 generated files: malformed YAML, binary, empty, control characters
    does: one UserError line naming the file (and line) per problem
    lost: nothing"""
    path = tmp_path / "c.yaml"
    path.write_bytes(blob if isinstance(blob, bytes) else blob.encode("utf-8", "surrogatepass"))
    try:
        load_config(path, (), None)
    except UserError as exc:
        assert exc.problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(KEYS), values, max_size=4),
       drop=st.lists(st.sampled_from(sorted(BASE)), max_size=3))
def test_ds_tp_validate_exits_0_or_2(tmp_path, changes, drop):
    """fault: 300 generated configs fed to the `ds-tp validate` command itself
    does: exit 0, or exit 2 with one line per problem naming the file; never a traceback
    lost: nothing"""
    from click.testing import CliRunner

    from ds_tp.cli import main

    data = {k: v for k, v in BASE.items() if k not in drop}
    data.update(changes)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8", errors="surrogatepass")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        errors = [x for x in result.output.splitlines() if x and not x.startswith(("warning:", "notice:"))]
        assert errors and all(x.startswith(f"error: {path}") for x in errors), result.output
