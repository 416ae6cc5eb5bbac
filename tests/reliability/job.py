"""A `ds-tp train` job the way a user's shell runs it: its own process group, output to a file.

On leaving the context the whole group is SIGKILLed, so ranks that outlived ds-tp (the failure some
tests look for) never outlive the test, and ds-tp itself is reaped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.conftest import EXAMPLES, ROOT
from tests.launcher.test_train_cli import DS_TP


@contextmanager
def training_job(args: list, log_path: Path):
    env = dict(os.environ, PATH="/usr/bin:/bin", OMP_NUM_THREADS="1")  # venv not activated
    with open(log_path, "w") as log:
        job = subprocess.Popen([DS_TP, "train", str(EXAMPLES / "quickstart.yaml"), *map(str, args)], stdout=log,
                               stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    try:
        yield job
    finally:
        with suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(30)


def wait_for(job, ready, log_path: Path, timeout: float = 300) -> None:
    """Poll until ready() while the job runs; fail with the log's tail if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert job.poll() is None, f"ds-tp ended (exit {job.returncode}):\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not ready after {timeout} s:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.1)


def survivors(out: Path) -> list[str]:
    """PIDs of processes still naming `out` on their command line; they are killed before returning."""
    time.sleep(1)
    pids = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    return pids


def metrics(out: Path) -> list[dict]:
    """metrics.jsonl while it is being written: missing file -> [], a half-written last line is skipped."""
    path = out / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with suppress(ValueError):
            rows.append(json.loads(line))
    return rows
