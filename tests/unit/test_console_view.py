"""The launching process's view of rank 0's events (launch/console.py), without a terminal: plain lines."""
import json

from ds_tp.launch.console import ConsoleView
from ds_tp.train.metrics import ConsoleEvents

ROW = {"step": 5, "total_steps": 10, "loss": 1.5, "lr": 0.001, "grad_norm": 0.5, "tokens_per_s": 1000.0,
       "tokens_per_s_per_device": 500.0, "peak_mem_gib": 0.5, "mfu": None}


def test_plain_lines_from_rank_zeros_events(tmp_path, capsys):
    path = tmp_path / "console.jsonl"
    events = ConsoleEvents(str(path))
    events.start(0, 10)
    events.say("layout dp_shard(2)")
    for step in range(1, 5):
        events.update(step, None)  # per-step ticks: the bar's, never a line
    events.update(5, ROW)
    events.update(5, {"step": 5, "total_steps": 10, "eval_loss": 1.25})
    path.open("a").write('{"say": "half-writ')  # a line still being written is not shown yet
    view = ConsoleView(path, live=False)
    view._read()
    out = capsys.readouterr().out.splitlines()
    rank_stdout = out[:3]  # ConsoleEvents also prints to this process's stdout (a rank's log file)
    shown = out[3:]
    assert rank_stdout == ["[ds-tp] layout dp_shard(2)", "step 5/10 | loss 1.5000 | lr 0.001 | grad_norm 0.500 | "
                           "1000 tok/s (500/dev) | mem 0.50 GiB", "step 5/10 | eval_loss 1.2500"]
    assert shown == ["ds-tp: layout dp_shard(2)", rank_stdout[1], rank_stdout[2]]
    assert view.last_step == 5
    path.open("a").write('ten"}\n')
    view._read()
    assert capsys.readouterr().out == "ds-tp: half-written\n"


def test_events_are_json_lines_only_when_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DS_TP_CONSOLE", raising=False)
    ConsoleEvents().say("no file")  # a rank not started by `ds-tp train` (tests, a hand-run worker)
    assert capsys.readouterr().out == "[ds-tp] no file\n"
    monkeypatch.setenv("DS_TP_CONSOLE", str(tmp_path / "c.jsonl"))
    ConsoleEvents().update(3, None)
    assert [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()] == [{"step": 3}]
