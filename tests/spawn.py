"""Spawn N ranks of a function in fresh processes over gloo: the nanotron-style helper that tests use
instead of the launcher (which costs ~10 s per start). Each launch gets a fresh free port, one
BLAS thread per rank, a bounded timeout, and every process it started is reaped."""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
import traceback


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(fn, rank: int, world: int, port: int, args: tuple, errors) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"})
    try:
        import torch
        torch.set_num_threads(1)
        fn(*args)
        import torch.distributed as tdist
        if tdist.is_initialized():  # gloo's threads stopped in order, not by the interpreter's teardown
            tdist.destroy_process_group()
    except BaseException:  # report to the parent, then fail this rank
        errors.put((rank, traceback.format_exc()))
        raise


def run_ranks(fn, world: int, *args, timeout: float = 300) -> None:
    """Run fn(*args) on `world` ranks; raise with the first failing rank's traceback."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, args, errors), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
    finally:
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
        for p in procs:
            p.join(10)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    if hung:
        raise TimeoutError(f"ranks {[procs.index(p) for p in hung]} still running after {timeout} s (killed)")
    if failures or any(p.exitcode != 0 for p in procs):
        detail = "\n".join(f"--- rank {r}\n{tb}" for r, tb in sorted(failures))
        raise RuntimeError(f"rank exit codes {[p.exitcode for p in procs]}\n{detail}")
