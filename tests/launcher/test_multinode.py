"""Two "machines" on one box: one `ds-tp train` per machine rank over loopback, as on the card."""
import json
import subprocess

from tests.conftest import EXAMPLES, ROOT
from tests.launcher.test_train_cli import DS_TP, SHORT, ds_tp
from tests.spawn import free_port


def losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_machines_match_one_machine(tmp_path):
    import os
    one = tmp_path / "one"
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", *SHORT, "--num-processes", "2", "--dp-shard-size", "2",
                      "--output-dir", one, "--dataset-prepared-path", tmp_path / "prep")
    assert code == 0, log[-3000:]
    two = tmp_path / "two"
    port = str(free_port())
    env = dict(os.environ, PATH="/usr/bin:/bin", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([DS_TP, "train", str(EXAMPLES / "quickstart.yaml"), *SHORT, "--num-processes", "2",
                               "--num-machines", "2", "--machine-rank", str(rank), "--main-process-ip", "127.0.0.1",
                               "--main-process-port", port, "--dp-shard-size", "2", "--output-dir", str(two),
                               "--dataset-prepared-path", str(tmp_path / "prep")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
             for rank in (0, 1)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=400)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(x[-3000:] for x in logs)
    assert "--no_ssh --node_rank 1" in logs[1] or "node_rank=1" in logs[1]
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == 3
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
