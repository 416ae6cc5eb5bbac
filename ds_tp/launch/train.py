"""`ds-tp train` in the launching process: hosts and device -> config -> prepared run -> launcher."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from ds_tp.config import Config, load_config
from ds_tp.errors import Problem, UserError
from ds_tp.runfiles import (
    DEEPSPEED_CONFIG,
    ENV_FILE,
    RESOLVED_CONFIG,
    RUN_FILE,
    PreparedRun,
    existing_checkpoints,
    read_state,
    run_dir,
)


def target_device(flag: str | None, hosts=None, hostfile: Path | None = None, runner: str = "pdsh",
                  env: dict | None = None, notify=None) -> dict:
    """The device the ranks run on, which decides "auto" precision, fused kernels and DS_ACCELERATOR:
    --target-device when given; with a pdsh hostfile, what the first host reports over ssh; with
    another runner, the launching host's device, said in a notice; else this machine's."""
    from ds_tp.device import named_target, probe_with_torch
    slots = hosts[0].slots if hosts else None
    if flag:
        return named_target(flag, slots if slots is not None else 1)
    if hosts and runner == "pdsh":
        from ds_tp.launch.ssh_check import check_pdsh_hosts, probe_remote_device
        check_pdsh_hosts(hostfile, hosts, env or {})
        return probe_remote_device(hosts[0], env or {})
    local = probe_with_torch()
    if hosts:
        if notify:
            notify(f"notice: {hostfile}: the {runner} runner's hosts are not probed; 'auto' values follow this "
                   f"machine's device ({local['name']}): pass --target-device cpu|cuda|cuda-fp16 if they differ")
        return dict(local, count=slots)
    return local


def prepare_training(config: Path, overrides, num_processes: int | None, *, use_profiler: bool = False,
                     overwrite: bool = False, notify=None, machine_rank: int = 0, hostfile: Path | None = None,
                     hosts=None, plugin_modules: tuple = (), device: dict | None = None):
    """Everything before the launcher: (cfg, prepared run, its path, world, device). Shared by `train` and tests.

    The config is loaded once, for the world resolve_world gives (--num-processes, the hostfile's
    slots, or the ranks' GPU count). On machine ranks > 0 the output_dir check is machine 0's job: a
    sibling node of the same run must not refuse the folder that machine 0 has just started writing.
    """
    from ds_tp.launch.prepare import prepare_run

    if hostfile and hosts is None:
        from ds_tp.launch.hostfile import parse_hostfile
        hosts = parse_hostfile(hostfile)
    if hosts:
        slots = sum(h.slots for h in hosts)
        if num_processes and num_processes != slots:
            raise UserError(Problem(f"--num-processes {num_processes} differs from the {slots} slots of the hostfile: "
                                    "the runner starts a rank on every slot", where=str(hostfile),
                                    hint="leave --num-processes out, or change the slots"))
        num_processes = slots
    device = device or target_device(None)
    cfg = load_config(config, overrides, num_processes, plugin_modules, gpu_count=device["count"])
    if notify:
        notify(cfg)
    if hosts:
        from ds_tp.launch.hostfile import check_hosts_fit_layout
        check_hosts_fit_layout(hostfile, hosts, cfg.layout.tp, cfg.layout.cp)
    resume = resolve_resume(cfg)
    prepared = prepare_run(cfg, device=device, resume_from=resume, use_profiler=use_profiler, overwrite=overwrite,
                           check_output=machine_rank == 0)
    return cfg, prepared, write_run_files(prepared, cfg, machine_rank), cfg.layout.world, device


# Variables every node's ranks need; the runner's own list only covers NCCL/PYTHON/UCX/MV2/MLFLOW.
CARRIED_PREFIXES = ("NCCL_", "HF_", "PYTHONPATH", "OMP_", "DS_TP_", "DS_ACCELERATOR", "TRANSFORMERS_", "CUDA_",
                    "TORCH_")


def carry_environment(env: dict, folder: Path) -> Path:
    """An env file for DeepSpeed's runner (DS_ENV_FILE), never the user's own ~/.deepspeed_env."""
    lines = [f"{k}={v}\n" for k, v in sorted(env.items()) if k.startswith(CARRIED_PREFIXES) and "\n" not in v]
    path = folder / ENV_FILE
    path.write_text("".join(lines))
    return path.resolve()


def resolve_resume(cfg: Config) -> str | None:
    values = cfg.values
    out = Path(values.get("output_dir", "./model-out"))
    explicit = values.get("resume_from_checkpoint")
    if explicit:
        path = Path(explicit)
        try:
            state = read_state(path)
        except UserError as exc:
            raise UserError(Problem(f"{exc.problems[0].message}", where=cfg.where(("resume_from_checkpoint",)),
                                    key="resume_from_checkpoint")) from None
        _check_same_layout(cfg, path, state)
        return str(path.resolve())
    if values.get("auto_resume_from_checkpoints"):
        done = existing_checkpoints(out)
        if done:
            _check_same_layout(cfg, done[-1], read_state(done[-1]))
            return str(done[-1].resolve())
    return None


def _check_same_layout(cfg: Config, checkpoint: Path, state: dict) -> None:
    saved = state.get("layout", {})
    now = {k: getattr(cfg.layout, k) for k in ("dp_replicate", "dp_shard", "tp", "cp")}
    if {k: saved.get(k) for k in now} != now:
        raise UserError(Problem(f"{checkpoint} was saved with layout {saved}, this run is {now}: DeepSpeed "
                                "checkpoints resume on the same layout", key="resume_from_checkpoint",
                                hint=f"run with the saved layout, or `ds-tp export {checkpoint} OUT` and start "
                                "from the exported model"))


def write_run_files(prepared: PreparedRun, cfg: Config, machine_rank: int = 0) -> Path:
    folder = run_dir(prepared.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if machine_rank == 0:  # one writer when output_dir is shared storage
        (folder / RESOLVED_CONFIG).write_text(json.dumps(cfg.values, indent=2, default=str))
        (folder / DEEPSPEED_CONFIG).write_text(json.dumps(prepared.ds_config, indent=2, sort_keys=True))
    path = folder / (RUN_FILE if machine_rank == 0 else f"run-machine{machine_rank}.json")
    prepared.write(path)
    return path


def format_command(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
