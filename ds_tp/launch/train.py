"""`ds-tp train` and `ds-tp preprocess` in the launching process: config -> plan -> launcher."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from ds_tp.config import Config, load_config
from ds_tp.errors import Problem, UserError
from ds_tp.launch.plan import PLAN_DIR, existing_checkpoints


def prepare_training(config: Path, overrides, num_processes: int | None, *, use_profiler: bool = False,
                     overwrite: bool = False, notify=None, machine_rank: int = 0, hostfile: Path | None = None,
                     plugin_modules: tuple = ()):
    """Everything before the launcher: (cfg, plan, plan_path, world, device). Shared by `train` and tests.

    On machine ranks > 0 the output_dir check is machine 0's job: a sibling node of the same run
    must not refuse the folder that machine 0 has just started writing.
    """
    from ds_tp.device import probe_with_torch
    from ds_tp.launch.plan import build_plan

    device = probe_with_torch()
    world = choose_world_size(config, overrides, num_processes, device["count"])
    cfg = load_config(config, overrides, world, plugin_modules)
    if notify:
        notify(cfg)
    if hostfile:
        from ds_tp.launch.hostfile import check_hosts_fit_layout, parse_hostfile
        check_hosts_fit_layout(hostfile, parse_hostfile(hostfile), cfg.layout.tp, cfg.layout.cp)
    resume = resolve_resume(cfg)
    plan = build_plan(cfg, device=device, resume_from=resume, use_profiler=use_profiler, overwrite=overwrite,
                      check_output=machine_rank == 0)
    return cfg, plan, write_run_files(plan, cfg, machine_rank), world, device


def hostfile_world(hostfile: Path) -> int:
    from ds_tp.launch.hostfile import parse_hostfile
    return sum(h.slots for h in parse_hostfile(hostfile))


# Variables every node's ranks need; the runner's own list only covers NCCL/PYTHON/UCX/MV2/MLFLOW.
CARRIED_PREFIXES = ("NCCL_", "HF_", "PYTHONPATH", "OMP_", "DS_TP_", "DS_ACCELERATOR", "TRANSFORMERS_", "CUDA_",
                    "TORCH_")


def carry_environment(env: dict, run_dir: Path) -> Path:
    """An env file for DeepSpeed's runner (DS_ENV_FILE), never the user's own ~/.deepspeed_env."""
    lines = [f"{k}={v}\n" for k, v in sorted(env.items()) if k.startswith(CARRIED_PREFIXES) and "\n" not in v]
    path = run_dir / "deepspeed_env"
    path.write_text("".join(lines))
    return path.resolve()


def choose_world_size(config: Path, overrides, num_processes: int | None, gpu_count: int) -> int:
    """--num-processes; else the layout's product when dp_shard_size is set; else the local GPU count."""
    if num_processes:
        return num_processes
    probe = load_config(config, overrides, None)
    if probe.values.get("dp_shard_size"):
        return probe.layout.world
    return max(1, gpu_count)


def resolve_resume(cfg: Config) -> str | None:
    values = cfg.values
    out = Path(values.get("output_dir", "./model-out"))
    explicit = values.get("resume_from_checkpoint")
    if explicit:
        path = Path(explicit)
        if not (path / "ds_tp_state.json").is_file():
            raise UserError(Problem(f"{explicit} is not a complete ds-tp checkpoint (no ds_tp_state.json)",
                                    where=cfg.where(("resume_from_checkpoint",)), key="resume_from_checkpoint"))
        _check_same_layout(cfg, path)
        return str(path.resolve())
    if values.get("auto_resume_from_checkpoints"):
        done = existing_checkpoints(out)
        if done:
            _check_same_layout(cfg, done[-1])
            return str(done[-1].resolve())
    return None


def _check_same_layout(cfg: Config, checkpoint: Path) -> None:
    state = json.loads((checkpoint / "ds_tp_state.json").read_text())
    saved = state.get("layout", {})
    now = {k: getattr(cfg.layout, k) for k in ("dp_replicate", "dp_shard", "tp", "cp")}
    if {k: saved.get(k) for k in now} != now:
        raise UserError(Problem(f"{checkpoint} was saved with layout {saved}, this run is {now}: DeepSpeed "
                                "checkpoints resume on the same layout", key="resume_from_checkpoint",
                                hint=f"run with the saved layout, or `ds-tp export {checkpoint} OUT` and start "
                                "from the exported model"))


def write_run_files(plan, cfg: Config, machine_rank: int = 0) -> Path:
    run_dir = Path(plan.output_dir) / PLAN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    if machine_rank == 0:  # one writer when output_dir is shared storage
        (run_dir / "resolved_config.json").write_text(json.dumps(cfg.values, indent=2, default=str))
        (run_dir / "deepspeed_config.json").write_text(json.dumps(plan.ds_config, indent=2, sort_keys=True))
    plan_path = run_dir / ("plan.json" if machine_rank == 0 else f"plan-machine{machine_rank}.json")
    plan.write(plan_path)
    return plan_path


def format_command(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
