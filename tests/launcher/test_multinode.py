"""Two "machines" on one box: one `ds-tp train` per machine rank over loopback, as on the card. Each machine
gets its own output_dir, as nodes without shared storage would."""
import json
import os
import shutil
import subprocess

from tests.conftest import EXAMPLES, ROOT
from tests.launcher.test_train_cli import DS_TP, SHORT, ds_tp
from tests.spawn import free_port


def losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def two_machines(outs, prep, *extra):
    """One `ds-tp train` per machine rank, each with its own output_dir; (return codes, logs)."""
    port = str(free_port())
    env = dict(os.environ, PATH="/usr/bin:/bin", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([DS_TP, "train", str(EXAMPLES / "quickstart.yaml"), *SHORT, "--num-processes", "2",
                               "--num-machines", "2", "--machine-rank", str(rank), "--main-process-ip", "127.0.0.1",
                               "--main-process-port", port, "--dp-shard-size", "2", "--output-dir", str(out),
                               "--dataset-prepared-path", str(prep), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                              start_new_session=True)
             for rank, out in enumerate(outs)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=400)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    return [p.returncode for p in procs], logs


def test_two_machines_match_one_machine(tmp_path):
    """Losses equal to one machine's; a checkpoint is completed on each machine's own disk; a resume where the
    machines found different checkpoints stops before loading anything, naming what each one found."""
    one = tmp_path / "one"
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", *SHORT, "--num-processes", "2", "--dp-shard-size", "2",
                      "--output-dir", one, "--dataset-prepared-path", tmp_path / "prep")
    assert code == 0, log[-3000:]
    outs = [tmp_path / "node0", tmp_path / "node1"]
    codes, logs = two_machines(outs, tmp_path / "prep", "--save-steps", "2")
    assert codes == [0, 0], "\n=====\n".join(x[-3000:] for x in logs)
    launcher = (outs[1] / "ds_tp" / "logs" / "launcher.log").read_text()  # machine 1's launcher, in its own logs
    assert "--no_ssh --node_rank 1" in launcher or "node_rank=1" in launcher
    a, b = losses(one), losses(outs[0])
    assert len(a) == len(b) == 3
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    for out in outs:  # each node's disk holds its rank's part, completed and named
        assert (out / "checkpoint-2" / "ds_tp_state.json").is_file() and not (out / "tmp-save-2").exists(), \
            sorted(p.name for p in out.iterdir())
        assert (out / "latest").read_text() == "checkpoint-2"
    assert sorted(p.name for p in (outs[1] / "checkpoint-2").glob("rng_state_*")) == ["rng_state_1.pt"]
    # machine 1 lost its checkpoint: machine 0 would resume at step 2 and machine 1 from scratch
    shutil.rmtree(outs[1] / "checkpoint-2")
    codes, logs = two_machines(outs, tmp_path / "prep", "--auto-resume-from-checkpoints", "--max-steps", "4")
    assert all(code != 0 for code in codes), "\n=====\n".join(x[-3000:] for x in logs)
    said = "\n".join(logs)
    assert "do not resume from the same checkpoint" in said and "checkpoint-2 (step 2)" in said, said[-4000:]
    assert "no checkpoint" in said
