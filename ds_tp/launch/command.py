"""The launcher command line: the deepspeed launcher (default) or torchrun, always started with the
interpreter ds-tp runs on (sys.executable), never whatever is first on PATH. Argument lists only."""
from __future__ import annotations

import os
import socket
import sys

WORKER_MODULE = "ds_tp.train.worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_command(launcher: str, nproc_per_node: int, plan_path: str, *, master_port: int,
                     master_addr: str = "127.0.0.1") -> list[str]:
    worker = ["--plan", plan_path]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc_per_node),
                "--nnodes", "1", "--master_addr", master_addr, "--master_port", str(master_port),
                "-m", WORKER_MODULE, *worker]
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc_per_node),
            "--master_addr", master_addr, "--master_port", str(master_port), "--no_local_rank",
            "--module", WORKER_MODULE, *worker]


def rank_environment(nproc_per_node: int, accelerator: str) -> dict[str, str]:
    """The environment ranks start with: unbuffered output, and on CPU one BLAS thread pool per core."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if accelerator == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
        env.setdefault("DS_ACCELERATOR", "cpu")  # silences DeepSpeed's accelerator guess (printed on stdout)
    return env
