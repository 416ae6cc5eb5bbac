"""The real multi-host path: a hostfile with two host names of this machine, the deepspeed launcher's
own pdsh/ssh launch, against an sshd started for the test with keys made for the test. Nothing
outside tmp_path is changed (ssh options travel in PDSH_SSH_ARGS_APPEND), and sshd is stopped after."""
import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import EXAMPLES
from tests.launcher.test_train_cli import ds_tp
from tests.ranks.harness import losses, read_metrics, train
from tests.spawn import free_port

SSHD = "/usr/sbin/sshd"
HAVE_TOOLS = os.path.exists(SSHD) and shutil.which("pdsh") and shutil.which("ssh-keygen")
# CI installs openssh-server and pdsh (.ci/run); there a missing tool is a failure, not a skip.
pytestmark = pytest.mark.skipif(not HAVE_TOOLS and not os.environ.get("CI"),
                                reason="needs sshd and pdsh (apt-get install openssh-server pdsh)")


@pytest.fixture
def sshd(tmp_path):
    assert HAVE_TOOLS, "sshd, ssh-keygen and pdsh must be installed"
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "id.pub", keys / "authorized_keys")
    port = free_port()
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host_key'}\nAuthorizedKeysFile "
        f"{keys / 'authorized_keys'}\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        f"UsePAM no\nPidFile {keys / 'sshd.pid'}\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(keys / "sshd_config")], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield (f"-p {port} -i {keys / 'id'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
               "-o LogLevel=ERROR")
    finally:
        proc.terminate()
        proc.wait(10)


def test_pdsh_ssh_launch_matches_one_machine(sshd, tmp_path, monkeypatch):
    """The hostfile launch without --main-process-ip (ds-tp asks the first host for its address over pdsh's ssh),
    and the environment carried to every rank (NCCL_*, HF_* with a token, DS_TP_*) as the ranks see it, through a
    plugin module that records it; the env file holding the token is 0600, outside output_dir, and removed."""
    import glob
    import json
    import tempfile

    args = ["--max-steps", "3", "--logging-steps", "1", "--sequence-len", "64"]
    one = losses(train(tmp_path / "one", [*args, "--dp-shard-size", "2"], 2))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two names for this machine\nlocalhost slots=1\n127.0.0.1 slots=1\n")
    monkeypatch.setenv("PDSH_SSH_ARGS_APPEND", sshd)
    carried = {"NCCL_DS_TP_TEST": "nccl-1", "HF_TOKEN": "hf_secret_for_the_test", "DS_TP_TEST_CARRIED": "yes"}
    for name, value in carried.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DS_TP_PROBE_ENV", ",".join(carried))
    probe = "tests.fixtures.plugin_probe.ProbePlugin"
    config = tmp_path / "c.yaml"
    config.write_text((EXAMPLES / "quickstart.yaml").read_text().replace(
        "examples/quickstart/data/tasks.jsonl", str(EXAMPLES / "quickstart" / "data" / "tasks.jsonl"))
        + f"plugins:\n  - {probe}\n")
    env_files = set(glob.glob(f"{tempfile.gettempdir()}/ds-tp-env-*"))
    out = tmp_path / "two"
    code, log = ds_tp("train", config, *args, "--hostfile", hostfile, "--output-dir", out,
                      "--dataset-prepared-path", tmp_path / "prepared", "--plugin-module", probe)
    assert code == 0, log[-4000:]
    launcher = (out / "ds_tp" / "logs" / "launcher.log").read_text()  # the launcher's lines: there, not on the console
    assert "pdsh -S -f 1024 -w localhost,127.0.0.1" in launcher and "pdsh -S" not in log
    assert "--master_addr" in launcher and "--master_addr 127.0.0.1" not in launcher  # the host's own address
    # the ranks started over ssh found ds-tp's variables: rank 0's events reached this console, each rank its log
    assert "step 3/3 | loss" in log
    assert all("==== rank" in (out / "ds_tp" / "logs" / f"rank-{r}.log").read_text() for r in (0, 1))
    two = losses(read_metrics(out))
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4 and len(two) == 3
    for rank in (0, 1):
        rows = [json.loads(x) for x in (out / f"plugin-rank{rank}.jsonl").read_text().splitlines()]
        assert rows and all(r["env"] == carried for r in rows), rows
    written = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith("plugin-rank")  # the probe's
               and p.stat().st_size < 1 << 20 and p.suffix in ("", ".json", ".jsonl", ".txt", ".log")]
    assert written and not any("hf_secret_for_the_test" in p.read_text(errors="replace") for p in written)
    assert set(glob.glob(f"{tempfile.gettempdir()}/ds-tp-env-*")) == env_files  # removed after the launch


def test_unreachable_host_is_one_line(sshd, tmp_path, monkeypatch):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\nno-such-host.invalid slots=1\n")
    monkeypatch.setenv("PDSH_SSH_ARGS_APPEND", sshd)
    code, log = ds_tp("train", EXAMPLES / "quickstart.yaml", "--max-steps", "1", "--hostfile", hostfile,
                      "--output-dir", tmp_path / "o", "--dataset-prepared-path", tmp_path / "p")
    assert code == 2, log[-3000:]
    errors = [x for x in log.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and f"{hostfile}:2:" in errors[0] and "no-such-host.invalid" in errors[0], log[-2000:]
