"""Generated bad datasets and hostfiles never produce a traceback: the code returns or raises UserError
(one line per problem). With tests/unit/test_fuzz_config.py: over 1000 generated inputs per run."""
import json
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ds_tp.data import prepare_datasets
from ds_tp.errors import UserError
from ds_tp.launch.hostfile import check_hosts_fit_layout, parse_hostfile
from tests.unit.test_data_errors import tokenizer

cells = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=True),
                  st.text(string.printable + "é中\u202e\x00", max_size=20), st.lists(st.integers(), max_size=3),
                  st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))
rows = st.lists(st.dictionaries(st.sampled_from(["instruction", "input", "output", "text", "messages", "x"]), cells,
                                max_size=4), max_size=6)
kinds = st.sampled_from(["alpaca", "completion", "chat_template"])
settings_ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def ok_or_user_error(fn, source) -> None:
    """Returns, or raises UserError whose every problem names the input it came from."""
    try:
        fn()
    except UserError as exc:
        assert exc.problems and all(str(source) in str(p) for p in exc.problems), exc.problems


@settings_
@given(data=rows, kind=kinds, raw=st.one_of(st.none(), st.binary(max_size=80)), seq=st.sampled_from([8, 64, 256]))
def test_generated_datasets_never_crash(data, kind, raw, seq):
    """fault: 120 generated datasets: missing fields, wrong types, NaN, non-UTF-8 bytes, empty files, rows longer than sequence_len, chats without an assistant turn
    does: prepare_datasets returns or raises one UserError line naming file, row and field
    lost: nothing (no rank is started)"""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "d.jsonl"
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in data), encoding="utf-8")
        cfg = {"datasets": [{"path": "d.jsonl", "type": kind}], "sequence_len": seq,
               "dataset_prepared_path": str(tmp / "prepared"), "chat_template": "chatml"}
        ok_or_user_error(lambda: prepare_datasets(cfg, tokenizer(), config_dir=tmp), "d.jsonl")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=120), st.lists(st.tuples(
    st.text(string.ascii_letters + string.digits + ".-[]:# ", max_size=12),
    st.one_of(st.integers(-3, 20).map(str), st.text(max_size=4))), max_size=5).map(
    lambda hosts: "".join(f"{h} slots={s}\n" for h, s in hosts))), tp=st.sampled_from([1, 2, 4]))
def test_generated_hostfiles_never_crash(tmp_path, text, tp):
    """fault: 300 generated hostfiles: bad lines, duplicates, zero or non-numeric slots, slots that split a TP group
    does: one UserError line per problem naming the hostfile line
    lost: nothing (nothing is launched)"""
    path = tmp_path / "hostfile"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    ok_or_user_error(lambda: check_hosts_fit_layout(path, parse_hostfile(path), tp, 1), path)
