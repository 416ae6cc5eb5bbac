"""use_tensorboard and wandb (offline) on 2 ranks: rank 0 writes every logged figure of metrics.jsonl to them,
under HF Trainer's tag names, at the same steps and with the same values."""
from __future__ import annotations

import json
import math

import pytest

from tests.ranks.harness import SHARP, train

STEPS = [*SHARP, "--max-steps", "4", "--val-set-size", "0.05", "--eval-steps", "2", "--dp-shard-size", "2"]
EXPECTED_TAGS = {"train/loss": "loss", "train/learning_rate": "lr", "train/grad_norm": "grad_norm",
                 "train/tokens_per_second": "tokens_per_s", "eval/loss": "eval_loss"}


def logged(rows: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])}


def test_tensorboard_and_wandb_offline_get_every_logged_figure(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    wandb = pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    rows = train(out, [*STEPS, "--use-tensorboard", "--wandb-project", "ds-tp-test", "--wandb-name", "trackers"], 2)
    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert set(EXPECTED_TAGS) <= tags, tags
    for tag, key in EXPECTED_TAGS.items():
        got = {e.step: e.value for e in events.Scalars(tag)}
        want = logged(rows, key)
        assert got.keys() == want.keys() and got, (tag, got, want)
        assert all(got[s] == pytest.approx(want[s], rel=1e-6) for s in want), (tag, got, want)

    [run_file] = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history, runs = wandb_records(run_file.read_bytes())
    assert [r.project for r in runs] == ["ds-tp-test"] and runs[0].display_name == "trackers"
    for tag, key in EXPECTED_TAGS.items():
        got = {h["_step"]: h[tag] for h in history if tag in h}
        assert got == pytest.approx(logged(rows, key), rel=1e-6), (tag, got)
    assert wandb.run is None  # finished by rank 0, not left open in this process


def wandb_records(data: bytes, block: int = 32768, header: int = 7):
    """(history rows, run records) of an offline run's .wandb file: wandb's LevelDB-style log (a 7-byte W&B
    header, 32 KiB blocks of records: crc32 4, length 2, type 1 = full, 2 first, 3 middle, 4 last) of
    wandb_internal_pb2.Record protobufs. wandb 0.31's Python package has no reader of its own."""
    import struct

    from wandb.proto import wandb_internal_pb2

    history, runs, pos, pending = [], [], header, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind == 2 else pending + chunk
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        if record.WhichOneof("record_type") == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif record.WhichOneof("record_type") == "run":
            runs.append(record.run)
    return history, runs
