"""The launcher command line: the deepspeed launcher (default) or torchrun, always started with the
interpreter ds-tp runs on (sys.executable), never whatever is first on PATH. Argument lists only.

Three shapes: one machine; every node from a hostfile (deepspeed's pdsh/ssh or another runner);
or per-node, as on the card (`--num-machines 2 --machine-rank R --main-process-ip IP`), mapped onto
the deepspeed launcher's --no_ssh --node_rank mode with a hostfile ds-tp writes for it.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from ds_tp.errors import Problem, UserError

WORKER_MODULE = "ds_tp.train.worker"
RUNNERS = ("pdsh", "openmpi", "mvapich", "slurm", "mpich", "impi")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LaunchSpec:
    launcher: str  # deepspeed | torchrun
    world: int
    num_machines: int = 1
    machine_rank: int | None = None
    master_addr: str | None = "127.0.0.1"  # None with a hostfile: DeepSpeed asks the first host; per-node: required
    master_port: int = 0
    hostfile: str | None = None  # the user's, for the runner's own multi-node launch
    runner: str = "pdsh"

    @property
    def per_node(self) -> int:
        return self.world // self.num_machines

    def check(self) -> None:
        if self.num_machines > 1 and self.world % self.num_machines:
            raise UserError(Problem(f"--num-processes {self.world} is not divisible by --num-machines "
                                    f"{self.num_machines}", where="command line",
                                    hint="--num-processes counts ranks over all machines"))
        if self.num_machines > 1 and self.machine_rank is None and not self.hostfile:
            raise UserError(Problem("--num-machines > 1 needs --machine-rank (run once per node) or --hostfile",
                                    where="command line"))
        if self.num_machines > 1 and self.machine_rank is not None and not self.master_addr:
            raise UserError(Problem(f"--num-machines {self.num_machines} with --machine-rank needs --main-process-ip, "
                                    "the address of machine rank 0: without it every node would wait on its own "
                                    "127.0.0.1 until the 30 min timeout", where="command line"))
        if self.num_machines > 1 and self.machine_rank is not None and not self.master_port:
            raise UserError(Problem("--main-process-port is needed when each machine is launched on its own (every "
                                    "node must name the same port)", where="command line"))
        if self.machine_rank is not None and not 0 <= self.machine_rank < self.num_machines:
            raise UserError(Problem(f"--machine-rank {self.machine_rank} is outside 0..{self.num_machines - 1}",
                                    where="command line"))
        if self.hostfile and self.launcher == "torchrun":
            raise UserError(Problem("--hostfile launches through the deepspeed launcher; with torchrun run one "
                                    "command per node (--num-machines, --machine-rank)", where="command line"))


def launcher_command(spec: LaunchSpec, run_file: str, scratch: Path) -> list[str]:
    worker = ["--run-file", run_file]
    port = str(spec.master_port)
    if spec.launcher == "torchrun":
        nodes = ["--nnodes", str(spec.num_machines), "--node_rank", str(spec.machine_rank or 0)]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(spec.per_node), *nodes,
                "--master_addr", spec.master_addr or "127.0.0.1", "--master_port", port, "-m", WORKER_MODULE, *worker]
    base = [sys.executable, "-m", "deepspeed.launcher.runner"]
    addr = ["--master_addr", spec.master_addr] if spec.master_addr else []
    tail = [*addr, "--master_port", port, "--no_local_rank", "--module", WORKER_MODULE, *worker]
    if spec.hostfile:
        # --no_ssh_check: with pdsh ds-tp checked every host itself (ssh_check.py); DeepSpeed checks only the first
        skip = ["--no_ssh_check"] if spec.runner == "pdsh" else []
        return [*base, "--hostfile", spec.hostfile, "--launcher", spec.runner, *skip, *tail]
    if spec.num_machines > 1:
        # deepspeed's per-node mode reads the node list from a hostfile; names are placeholders
        # (--no_ssh: nothing connects to them), slots give every node's rank count.
        hostfile = scratch / f"hostfile-{spec.num_machines}x{spec.per_node}"
        hostfile.write_text("".join(f"node{i} slots={spec.per_node}\n" for i in range(spec.num_machines)))
        return [*base, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(spec.machine_rank),
                "--num_nodes", str(spec.num_machines), *tail]
    return [*base, "--num_gpus", str(spec.world), *tail]


def rank_environment(nproc_per_node: int, accelerator: str) -> dict[str, str]:
    """The environment ranks start with: unbuffered output, and on CPU one BLAS thread pool per core."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if accelerator == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
        env.setdefault("DS_ACCELERATOR", "cpu")  # silences DeepSpeed's accelerator guess (printed on stdout)
    return env
