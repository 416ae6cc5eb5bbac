"""Mutated and broken configs never produce a traceback: load_config returns or raises UserError, and every
error line names the file and the line it points at (see line_named for the rule)."""
import re
import string

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ds_tp.config import load_config
from ds_tp.config.schema import renamed_keys
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


# Right after the file name: ":LINE: ", ":LINE:COL: ", ": row N: " or ": line N: ".
AT_LINE = re.compile(r"(?::(\d+)(?::\d+)?|: (?:row|line) (\d+)): ")
# What PyYAML counts as a line break (its marks' line numbers)
YAML_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
# Keys the loader reads under another name (the error may name the new key; its line is the old one's)
RENAMED = {**renamed_keys(), "sequence_parallel_degree": "context_parallel_size", "tokens": "special_tokens",
           "warmup_steps": "warmup_ratio"}


def line_named(error: str, path, whole_file: str) -> int | None:
    """The rule every error line of these tests follows: it starts with the file's path, then either a line (or
    row) number, returned, or, returning None, one of the problems `whole_file` (a regex) lists: a problem of the
    whole file (empty, binary, a required key it lacks) that no line can show. Anything else fails."""
    assert error.startswith(str(path)), f"does not name the file {path}: {error!r}"
    rest = error[len(str(path)):]
    found = AT_LINE.match(rest)
    if found:
        number = int(found[1] or found[2])
        assert number >= 1, error
        return number
    assert re.match(f": (?:{whole_file})", rest), f"names no line (or row) and is no whole-file problem: {error!r}"
    return None


def check_config_errors(path, text: str, problems) -> None:
    """Each error at a key the file spells (or spells under its old name) names a line inside that key's
    top-level block; only a required key the file lacks (or leaves empty: empty means unset) goes without a line."""
    pairs = yaml.compose(text).value
    tops = sorted((key.start_mark.line + 1, key.value) for key, _ in pairs)
    end = len(YAML_BREAK.findall(text)) + 2
    block = {key: (line, after) for (line, key), (after, _) in zip(tops, tops[1:] + [(end, "")])}
    unset = {key.value for key, value in pairs if value.tag == "tag:yaml.org,2002:null"}
    for problem in problems:
        error = str(problem)
        line = line_named(error, path, "missing required key '")
        if line is None:
            missing = re.search("missing required key '(.*?)'", error)[1]
            assert missing not in block or missing in unset, error
            continue
        top = re.match(r"[^.\[]*", problem.key)[0]
        spelled = [block[k] for k in block if top and top in (k, RENAMED.get(k))]
        assert line < end and (not spelled or any(first <= line < after for first, after in spelled)), \
            (error, spelled)


def check_file_errors(path, raw: bytes, problems) -> None:
    """Errors about a file's bytes name the line they are on: a not-UTF-8 error the first line that does not
    decode, a control-character error the first line that holds such a character (the one it names)."""
    text = raw.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    for problem in problems:
        error = str(problem)
        line = line_named(error, path, "binary file \\(contains NUL bytes\\)|empty config |missing required key '")
        if line is None:
            continue
        assert line <= len(YAML_BREAK.findall(text)) + 1, error
        if "not UTF-8" in error:
            bad = [n for n, ln in enumerate(lines, 1) if re.search("[\udc80-\udcff]", ln)]
            assert bad and line == bad[0], (error, bad)
        elif "control character" in error:
            char = chr(int(re.search(r"U\+([0-9A-F]{4,})", error)[1], 16))
            bad = [n for n, ln in enumerate(lines, 1) if yaml.reader.Reader.NON_PRINTABLE.search(ln)]
            assert bad and line == bad[0] and char in lines[line - 1], (error, bad)


def check(tmp_path, text: str, world) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load_config(path, (), world)
        build_ds_config(cfg, cpu_facts("fuzz"))
    except UserError as exc:
        assert exc.problems
        check_config_errors(path, text, exc.problems)


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(KEYS), values, max_size=4),
       drop=st.lists(st.sampled_from(sorted(BASE)), max_size=3), world=st.sampled_from([None, 1, 2, 8, 16]))
# the old name of context_parallel_size, not dividing the default sequence_len: the error is at the line of the key
# the file spells
@example(changes={"sequence_parallel_degree": 3}, drop=["sequence_len"], world=None)
def test_mutated_configs_never_crash(tmp_path, changes, drop, world):
    """fault: 700 generated configs: wrong types, missing and extra keys, huge numbers, NaN, unicode, any world size
    does: load, validate and translate return, or raise UserError whose every line names the file and the line of
    the key it is about (inside that key's block; a missing required key: the file only)
    lost: nothing (no traceback, nothing written)"""
    data = {k: v for k, v in BASE.items() if k not in drop}
    data.update(changes)
    check(tmp_path, yaml.safe_dump(data, allow_unicode=True), world)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
@example(blob="a: 1\nb: [2]\nc: x\x07y\n")  # a control character on line 3
@example(blob=b"\xef\xbb\xbfa: 1\nb:\n\xff\n")  # a BOM, then a byte that is not UTF-8 on line 3
@example(blob="a: 1\nb: [2,\n")  # a YAML syntax error at the end
def test_arbitrary_files_never_crash(tmp_path, blob):
    """fault: 400 generated files: malformed YAML, binary, empty, control characters
    does: one UserError line per problem naming the file and the line (the first bad line, for bad bytes and
    control characters), or only the file when it is empty or binary
    lost: nothing"""
    path = tmp_path / "c.yaml"
    raw = blob if isinstance(blob, bytes) else blob.encode("utf-8", "surrogatepass")
    path.write_bytes(raw)
    try:
        load_config(path, (), None)
    except UserError as exc:
        assert exc.problems
        check_file_errors(path, raw, exc.problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(KEYS), values, max_size=4),
       drop=st.lists(st.sampled_from(sorted(BASE)), max_size=3))
def test_ds_tp_validate_exits_0_or_2(tmp_path, changes, drop):
    """fault: 300 generated configs fed to the `ds-tp validate` command itself
    does: exit 0, or exit 2 with one line per problem naming the file and line; never a traceback
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
        assert errors and all(x.startswith("error: ") for x in errors), result.output
        for error in errors:
            line_named(error.removeprefix("error: "), path, "missing required key '")
