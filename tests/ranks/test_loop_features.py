"""Eval loss, checkpoint rotation and the profiler trace, on 2 spawned ranks (ZeRO-3)."""
import json

from tests.ranks.harness import QUICKSTART, train


def test_eval_rotation_profiler(tmp_path):
    out = tmp_path / "run"
    rows = train(out, ["--max-steps", "6", "--logging-steps", "2", "--sequence-len", "64", "--val-set-size", "0.05",
                       "--eval-steps", "3", "--save-steps", "2", "--save-total-limit", "1"], 2, use_profiler=True)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6]
    assert [r["step"] for r in eval_rows] == [3, 6]
    assert all("loss" not in r for r in eval_rows)
    assert 0 < eval_rows[-1]["eval_loss"] < eval_rows[0]["eval_loss"] < 10
    # save_total_limit 1: only the newest complete checkpoint is kept
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    traces = list((out / "profiler").glob("*.json"))
    assert traces, list(out.iterdir())
    assert "traceEvents" in json.loads(traces[0].read_text())


def test_bf16_with_gradient_checkpointing_trains(tmp_path):
    out = tmp_path / "bf16"
    rows = train(out, ["--max-steps", "4", "--logging-steps", "1", "--sequence-len", "64", "--bf16",
                       "--gradient-checkpointing", "--dp-shard-size", "2"], 2)
    ds = json.loads((out / "ds_tp" / "deepspeed_config.json").read_text())
    assert ds["bf16"] == {"enabled": True}
    losses = [r["loss"] for r in rows]
    assert len(losses) == 4 and all(0 < x < 10 for x in losses)
    assert losses[-1] < losses[0]


def test_bf16_on_one_device_uses_torch_autocast(tmp_path):
    out = tmp_path / "autocast"
    rows = train(out, ["--max-steps", "4", "--logging-steps", "1", "--sequence-len", "64", "--bf16",
                       "--dp-shard-size", "1"], 1)
    ds = json.loads((out / "ds_tp" / "deepspeed_config.json").read_text())
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in ds
    losses = [r["loss"] for r in rows]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_an_allowed_plugin_gets_its_hooks_on_every_rank(tmp_path, write_config):
    """`--plugin-module` lets each rank import a plugins: entry and call its Axolotl hooks."""
    probe = "tests.fixtures.plugin_probe.ProbePlugin"
    config = write_config(QUICKSTART.read_text() + f"plugins:\n  - {probe}\n", "plugin.yaml")
    out = tmp_path / "run"
    train(out, ["--max-steps", "1", "--sequence-len", "64"], 2, config=config, plugin_modules=(probe,))
    for rank in (0, 1):
        hooks = [json.loads(x) for x in (out / f"plugin-rank{rank}.jsonl").read_text().splitlines()]
        assert hooks == [{"hook": "pre_model_load", "detail": None},
                         {"hook": "post_model_load", "detail": "LlamaForCausalLM"}]


def test_a_deepspeed_scheduler_of_the_users_json_warms_up_from_zero(tmp_path, write_config):
    """A `scheduler` block in the user's deepspeed JSON drives the rate instead of ds-tp's schedule.
    DeepSpeed's WarmupLR gives its first two iterations the floor rate; ds-tp steps it once at the
    start, so step k runs at (k-1)/warmup of the peak, as transformers' warm-up does."""
    config = write_config(QUICKSTART.read_text() + "deepspeed:\n  scheduler:\n    type: WarmupLR\n    params:\n"
                          "      warmup_min_lr: 0\n      warmup_max_lr: 0.4\n      warmup_num_steps: 4\n"
                          "      warmup_type: linear\n", "ds_scheduler.yaml")
    rows = train(tmp_path / "warm", ["--max-steps", "3", "--logging-steps", "1", "--sequence-len", "64",
                                     "--dp-shard-size", "1", "--learning-rate", "0.4", "--optimizer", "sgd"], 1,
                 config=config)
    assert [round(r["lr"], 6) for r in rows] == [0.0, 0.1, 0.2]


def test_loss_watchdog_stops_a_run_above_the_threshold(tmp_path):
    """Axolotl's loss_watchdog_*: two logged steps above the threshold stop the run with the reason."""
    import pytest

    from tests.ranks.harness import read_metrics
    out = tmp_path / "dog"
    with pytest.raises(RuntimeError) as caught:
        train(out, ["--max-steps", "6", "--logging-steps", "1", "--sequence-len", "64", "--dp-shard-size", "1",
                    "--loss-watchdog-threshold", "0.001", "--loss-watchdog-patience", "2"], 1)
    assert "LossDiverged: loss watchdog" in str(caught.value) and "up to step 2" in str(caught.value)
    assert [r["step"] for r in read_metrics(out)] == [1, 2]  # stopped at once, not after 6 steps


def test_early_stopping_ends_the_run_and_saves_the_model(tmp_path):
    """early_stopping_patience 2: an lr too small to move a float32 weight keeps eval_loss equal, so the
    run stops after the third evaluation and the model is exported as at the end of training."""
    out = tmp_path / "early"
    rows = train(out, ["--max-steps", "8", "--logging-steps", "1", "--sequence-len", "64", "--dp-shard-size", "1",
                       "--val-set-size", "0.05", "--eval-steps", "1", "--early-stopping-patience", "2", "--save-steps", "2",
                       "--optimizer", "sgd", "--learning-rate", "1e-30", "--lr-scheduler", "constant",
                       "--warmup-steps", "0"], 1)
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 3 and evals[0] == evals[1] == evals[2]
    assert max(r["step"] for r in rows) == 3
    assert (out / "model.safetensors").is_file()
    # the count is saved with the checkpoint (one evaluation without improvement at step 2), for a resume
    saved = json.loads((out / "checkpoint-2" / "ds_tp_state.json").read_text())["early_stopping"]
    assert saved == {"best": evals[0], "without_improvement": 1}
