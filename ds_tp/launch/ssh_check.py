"""Before a pdsh launch: pdsh is installed and every host of the hostfile answers over ssh with the
same options pdsh will use (PDSH_SSH_ARGS_APPEND), so an unreachable host is one line naming it
instead of a hang or a launcher traceback. DeepSpeed's own check (first host only, plain ssh) is
skipped in favour of this one."""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from ds_tp.errors import Problem, UserError


def _ssh(host: str, env: dict) -> list[str]:
    extra = shlex.split(env.get("PDSH_SSH_ARGS_APPEND", ""))
    return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *extra, host]


def probe_remote_device(host, env: dict) -> dict:
    """The ranks' device as the first host reports it (nvidia-smi over the same ssh pdsh uses): so
    "auto" precision and DS_ACCELERATOR follow the hosts that train, not the launching host."""
    from ds_tp.device import SMI_QUERY, cpu_facts, gpu_facts_from_smi
    try:
        done = subprocess.run([*_ssh(host.name, env), "nvidia-smi", *SMI_QUERY], capture_output=True, text=True,
                              timeout=30, env=env)
        out = done.stdout if done.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    facts = gpu_facts_from_smi(out, f"nvidia-smi on {host.name}")
    return dict(facts, count=host.slots) if facts else dict(cpu_facts(f"no GPU on {host.name} (nvidia-smi over ssh)"),
                                                          count=0)


def check_pdsh_hosts(hostfile: Path, hosts, env: dict) -> None:
    if not shutil.which("pdsh", path=env.get("PATH")):
        raise UserError(Problem("pdsh is not installed (apt-get install pdsh)", where=str(hostfile),
                                hint="or choose --multinode-runner openmpi|slurm|mpich|impi|mvapich"))
    problems = []
    for host in hosts:
        cmd = [*_ssh(host.name, env), "true"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
            failed = done.returncode != 0
            why = (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            failed, why = True, str(exc)
        if failed:
            problems.append(Problem(f"host {host.name!r} is not reachable over ssh: {why}",
                                    where=f"{hostfile}:{host.line}",
                                    hint="passwordless ssh is needed; PDSH_SSH_ARGS_APPEND passes ssh options"))
    if problems:
        raise UserError(problems)


def first_host_address(hostfile: Path, host, env: dict) -> str:
    """The first host's own address (the first of `hostname -I`), asked over the ssh pdsh uses: where the
    ranks meet when --main-process-ip is not given. DeepSpeed's own lookup runs plain ssh, without
    PDSH_SSH_ARGS_APPEND, so it fails where pdsh itself works."""
    try:
        done = subprocess.run([*_ssh(host.name, env), "hostname", "-I"], capture_output=True, text=True, timeout=30,
                              env=env)
        address = done.stdout.split()[0] if done.returncode == 0 and done.stdout.split() else ""
    except (OSError, subprocess.TimeoutExpired):
        address = ""
    if not address:
        raise UserError(Problem(f"could not ask host {host.name!r} for its address (`hostname -I` over ssh)",
                                where=f"{hostfile}:{host.line}", hint="pass --main-process-ip"))
    return address
