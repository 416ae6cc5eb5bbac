"""Generated bad datasets and hostfiles never produce a traceback: the code returns or raises UserError
(one line per problem, naming the file and the line or row; line_named in test_fuzz_config.py has the rule).
With tests/unit/test_fuzz_config.py: over 1000 generated inputs per run."""
import io
import json
import math
import re
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ds_tp.data import prepare_datasets
from ds_tp.errors import UserError
from ds_tp.launch.hostfile import check_hosts_fit_layout, parse_hostfile
from tests.unit.test_data_errors import tokenizer
from tests.unit.test_fuzz_config import line_named

cells = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=True),
                  st.text(string.printable + "é中\u202e\x00", max_size=20), st.lists(st.integers(), max_size=3),
                  st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
rows = st.lists(st.dictionaries(st.sampled_from(["instruction", "input", "output", "text", "messages", "x"]), cells,
                                max_size=4), max_size=6)
kinds = st.sampled_from(["alpaca", "completion", "chat_template"])
settings_ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# Problems of a whole dataset file, which no one line or row shows
WHOLE_DATA = ("the file is empty|the file has no rows|every row is an empty JSON object|"
              "expected JSON objects \\(one per row\\)|(?:datasets|sequence_len|min_sample_len): every example ")
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what bytes that are not UTF-8 decode to with surrogateescape


def errors_of(fn) -> list[str]:
    """[] when fn returns; the lines of the UserError it raises (never any other exception)."""
    try:
        fn()
    except UserError as exc:
        assert exc.problems, exc
        return [str(p) for p in exc.problems]
    return []


def first(lines: list, bad) -> int | None:
    """The 1-based number of the first line for which bad(line) holds."""
    return next((n for n, line in enumerate(lines, 1) if bad(line)), None)


def not_json_object(line: str) -> bool:
    try:
        return bool(line.strip()) and not isinstance(json.loads(line), dict)
    except ValueError:
        return True


def big_int(value) -> bool:
    """An integer the reader's 64-bit JSON fallback cannot hold, anywhere in value."""
    if isinstance(value, dict):
        return any(big_int(v) for v in value.values())
    if isinstance(value, list):
        return any(big_int(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64


def check_dataset_errors(errors: list[str], path: Path, raw: bytes, rows: list | None) -> None:
    """Every error names the file and the line or row it is about; the number is checked against the data:
    bytes that are not UTF-8, malformed JSON and integers too big are on the first such line; a row whose field
    is 'missing' lacks that field. rows: what the file holds one JSON line each (None: raw bytes)."""
    lines = raw.decode("utf-8", "surrogateescape").split("\n")
    for error in errors:
        number = line_named(error, path, WHOLE_DATA)
        if number is None:
            continue
        rest = error[len(str(path)):]
        if rest.startswith(": row "):
            assert number <= len(rows if rows is not None else lines), error
            field = re.match(r": row \d+: field '([^'.\[]*)': missing", rest)
            if field and rows is not None:
                value = rows[number - 1].get(field[1])
                assert value is None or (isinstance(value, float) and math.isnan(value)), (error, rows[number - 1])
        elif "not UTF-8" in rest:
            assert number == first(lines, NOT_UTF8.search), error
        elif "ends in the middle of a UTF-8 character" in rest:
            assert number == len(lines), error
        elif "does not fit in 64 bits" in rest:
            if rows is not None:
                assert number == first(rows, big_int), error
        elif "malformed JSON" in rest or "expected a JSON object per line" in rest:
            if not raw.lstrip().startswith(b"["):  # JSON Lines: the first line that is not an object
                assert number == first(lines, not_json_object), (error, lines)
            assert number <= len(lines), error
        else:
            raise AssertionError(f"a new kind of located error: add how to check its line here: {error!r}")


def check_hostfile_errors(errors: list[str], path: Path, raw: bytes) -> None:
    """Every error names the hostfile line it is about, numbered as DeepSpeed's launcher reads the file (text
    mode: \\n, \\r\\n, \\r); the line holds what the error quotes (the bad text, the host)."""
    text = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors="surrogateescape", newline=None).read()
    lines = text.split("\n")
    for error in errors:
        number = line_named(error, path, "no hosts in hostfile$")
        if number is None:
            continue
        assert number <= len(lines), error
        content = lines[number - 1].split("#", 1)[0].strip()
        if "not UTF-8" in error:
            assert number == first(lines, NOT_UTF8.search), error
            continue
        assert content, error
        got = re.search(r"expected 'host slots=N', got (.*)$", error)
        if got:
            assert got[1] == repr(content[:60]), (error, content)
        for host in re.findall(r"host '([^']*)'", error):
            assert re.match(re.escape(host) + r"\s", content), (error, content)
        earlier = re.search(r"first on line (\d+)\)", error)
        if earlier:
            assert int(earlier[1]) < number and lines[int(earlier[1]) - 1].strip().startswith(content.split()[0])


@settings_
@given(data=rows, kind=kinds, raw=st.one_of(st.none(), st.binary(max_size=80)), seq=st.sampled_from([8, 64, 256]))
@example(data=[{"instruction": "a", "output": "b"}] * 2 + [{"instruction": "a"}], kind="alpaca", raw=None, seq=256)
@example(data=[{"text": "a"}, {"text": [1, 2**70]}, {"text": 5.5}], kind="completion", raw=None, seq=256)
@example(data=[], kind="alpaca", raw=b'{"instruction": "a", "output": "b"}\n\n{"instruction": \xff}\n', seq=256)
@example(data=[], kind="alpaca", raw=b'{"instruction": "a", "output": "b"}\n{"instruction": "a",\n', seq=256)
@example(data=[], kind="alpaca", raw=b'{"instruction": "a", "output": "b"}\n{"output": "\xc3', seq=256)
@example(data=[], kind="alpaca", raw='{"instruction": "a\u2028b", "output": "c"}\n{"instruction": \n'.encode(), seq=256)
@example(data=[{"instruction": "a long instruction " * 3, "output": "b"}], kind="alpaca", raw=None, seq=8)
def test_generated_datasets_never_crash(data, kind, raw, seq):
    """fault: 120 generated datasets: missing fields, wrong types, NaN, integers beyond 64 bits, non-UTF-8 bytes, malformed JSON, empty files, rows longer than sequence_len, chats without an assistant turn
    does: prepare_datasets returns or raises one UserError line per problem naming the file and the row or line it
    is about (checked against the data); only whole-file problems (empty, every row too long, ...) name no line
    lost: nothing (no rank is started)"""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "d.jsonl"
        if raw is None:
            raw = "".join(json.dumps(r, allow_nan=True) + "\n" for r in data).encode("utf-8")
        else:
            data = None
        path.write_bytes(raw)
        cfg = {"datasets": [{"path": "d.jsonl", "type": kind}], "sequence_len": seq,
               "dataset_prepared_path": str(tmp / "prepared"), "chat_template": "chatml"}
        check_dataset_errors(errors_of(lambda: prepare_datasets(cfg, tokenizer(), config_dir=tmp)), path, raw, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=120), st.binary(max_size=60), st.lists(st.tuples(
    st.text(string.ascii_letters + string.digits + ".-[]:# ", max_size=12),
    st.one_of(st.integers(-3, 20).map(str), st.text(max_size=4))), max_size=5).map(
    lambda hosts: "".join(f"{h} slots={s}\n" for h, s in hosts))), tp=st.sampled_from([1, 2, 4]))
@example(text="a slots=4\r\n\x0cb slots=2\r\rc slots=6\n", tp=4)  # \r\n, a form feed, \r: b on line 2, c on 4
@example(text="a slots=1\na slots=2 # again\nb slots=x\n", tp=1)
@example(text=b"a slots=2\n# \xff\n", tp=1)
def test_generated_hostfiles_never_crash(tmp_path, text, tp):
    """fault: 300 generated hostfiles: bad lines, duplicates, zero or non-numeric slots, slots that split a TP group, bytes that are not UTF-8
    does: one UserError line per problem naming the hostfile line (the line holds what the error quotes)
    lost: nothing (nothing is launched)"""
    path = tmp_path / "hostfile"
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    path.write_bytes(raw)
    check_hostfile_errors(errors_of(lambda: check_hosts_fit_layout(path, parse_hostfile(path), tp, 1)), path, raw)
