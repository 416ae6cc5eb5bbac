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


def check_pdsh_hosts(hostfile: Path, hosts, env: dict) -> None:
    if not shutil.which("pdsh", path=env.get("PATH")):
        raise UserError(Problem("pdsh is not installed (apt-get install pdsh)", where=str(hostfile),
                                hint="or choose --multinode-runner openmpi|slurm|mpich|impi|mvapich"))
    extra = shlex.split(env.get("PDSH_SSH_ARGS_APPEND", ""))
    problems = []
    for host in hosts:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *extra, host.name, "true"]
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
