"""One rank killed mid-run: every process is gone within 120 s, the command fails naming that rank,
and the last complete checkpoint still exports to a model."""
import json
import os
import signal
import time

from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from ds_tp.cli import main
from ds_tp.runfiles import existing_checkpoints
from tests.reliability.job import survivors, training_job, wait_for


def _signal_rank1_after_checkpoint(tmp_path, sig, ddp_timeout: int):
    """Run 2 ranks until checkpoint-2, send `sig` to rank 1; (job, rank 1's record, seconds until ds-tp ended,
    the log). job.wait raises after 120 s: nothing ended the job."""
    out, log_path = tmp_path / "run", tmp_path / "run.log"
    args = ["--max-steps", "400", "--save-steps", "2", "--logging-steps", "1", "--sequence-len", "64",
            "--ddp-timeout", str(ddp_timeout), "--output-dir", out, "--dataset-prepared-path", tmp_path / "prep"]
    with training_job(args, log_path) as job:
        wait_for(job, lambda: (out / "checkpoint-2" / "ds_tp_state.json").exists(), log_path)
        rank1 = json.loads((out / "ds_tp" / "ranks" / "rank-1.json").read_text())
        os.kill(rank1["pid"], sig)
        sent = time.monotonic()
        job.wait(timeout=120)
        took = time.monotonic() - sent
    return job, rank1, took, log_path.read_text()


def test_killed_rank_is_named_and_nothing_hangs(tmp_path):
    """fault: one rank killed (SIGKILL) in the middle of a run
    does: the launcher stops the other rank, ds-tp exits non-zero within 120 s naming the rank (pid, host) that died first
    lost: the steps after the last checkpoint; that checkpoint exports to a model that from_pretrained loads"""
    out = tmp_path / "run"
    job, rank1, _, log = _signal_rank1_after_checkpoint(tmp_path, signal.SIGKILL, ddp_timeout=60)
    assert job.returncode != 0
    assert f"rank 1 (pid {rank1['pid']} on {rank1['host']}) failed first" in log, log[-3000:]
    assert f"every rank's output is in {out.resolve()}/ds_tp/logs/" in log  # and the end of the dead rank's log
    assert f"the end of {out.resolve()}/ds_tp/logs/rank-1.log:" in log, log[-3000:]
    assert not survivors(out)
    done = existing_checkpoints(out)
    result = CliRunner().invoke(main, ["export", str(done[-1]), str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf").config.num_hidden_layers == 4


def test_a_rank_that_stops_responding_is_named_and_the_job_ends(tmp_path):
    """fault: one rank stops responding (SIGSTOP: what a rank killed on another host, or a host gone from the network, looks like from here: no exit to see, and its peers wait in a collective until ddp_timeout)
    does: its heartbeat stops; after ddp_timeout / 2 (15 s here) ds-tp names it, ends the launcher and this host's ranks, and exits non-zero well before ddp_timeout
    lost: the steps after the last checkpoint"""
    out = tmp_path / "run"
    job, rank1, took, log = _signal_rank1_after_checkpoint(tmp_path, signal.SIGSTOP, ddp_timeout=30)
    assert job.returncode != 0 and took < 30, (took, log[-3000:])  # before the collectives' own 30 s timeout
    assert f"rank 1 (pid {rank1['pid']}" in log and "stopped responding" in log, log[-3000:]
    assert not survivors(out)
    assert existing_checkpoints(out)
