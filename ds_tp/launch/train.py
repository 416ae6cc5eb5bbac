"""`ds-tp train` in the launching process: hosts and device -> config -> prepared run -> launcher.

Order: the cheap checks first (flags, layout, hostfile, ports), then data preparation; --dry-run and
--print-command remove nothing; --overwrite moves the old run aside until the new one has started."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from ds_tp.config import Config, load_config
from ds_tp.errors import Problem, UserError
from ds_tp.runfiles import (
    DEEPSPEED_CONFIG,
    ENV_FILE,
    EVALUATE_DIR,
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


def plan_training(config: Path, overrides, num_processes: int | None, *, use_profiler: bool = False,
                  overwrite: bool = False, notify=None, machine_rank: int = 0, hostfile: Path | None = None,
                  hosts=None, plugin_modules: tuple = (), device: dict | None = None, mode: str = "train",
                  allow_batch_change: bool = False):
    """Everything before the launcher, writing nothing in output_dir: (cfg, prepared run, world, device).

    The config is loaded once, for the world resolve_world gives (--num-processes, the hostfile's
    slots, or the ranks' GPU count); `notify(cfg)` runs next, so the cheap checks of the caller (launch
    flags, ports) come before data preparation. On machine ranks > 0 the output_dir check is machine 0's
    job: a sibling node of the same run must not refuse the folder that machine 0 has just started writing.
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
    yaml_gas = cfg.values.get("gradient_accumulation_steps")
    resume, other_layout, resume_notes = resolve_resume(cfg, allow_batch_change) if mode == "train" else (None, False, [])
    prepared = prepare_run(cfg, device=device, resume_from=resume, use_profiler=use_profiler, overwrite=overwrite,
                           check_output=machine_rank == 0 and mode == "train")
    prepared.mode = mode
    prepared.resume_other_layout = other_layout
    prepared.yaml_gas = yaml_gas
    prepared.notes = resume_notes + prepared.notes
    if other_layout:
        from ds_tp.launch.resume import reshard_problem
        why = reshard_problem(prepared.resolved, read_state(Path(resume)))
        if why:
            raise UserError(Problem(f"{resume}: {why}", key="resume_from_checkpoint",
                                    where=cfg.where(("resume_from_checkpoint",)),
                                    hint=f"resume on the saved layout, or `ds-tp export {resume} OUT` and start from it"))
    if mode == "evaluate":  # its own root: a training run in output_dir (even a live one) is not touched
        prepared.output_dir = str(Path(prepared.output_dir) / EVALUATE_DIR)
    return cfg, prepared, cfg.layout.world, device


def prepare_training(config: Path, overrides, num_processes: int | None, **kwargs):
    """plan_training, then the run files written: (cfg, prepared run, its path, world, device). For tests and
    callers that start ranks themselves; `ds-tp train` orders the writes itself (dry runs write nothing)."""
    cfg, prepared, world, device = plan_training(config, overrides, num_processes, **kwargs)
    return cfg, prepared, write_run_files(prepared, cfg, kwargs.get("machine_rank", 0)), world, device


# Variables every node's ranks need; the runner's own list only covers NCCL/PYTHON/UCX/MV2/MLFLOW.
CARRIED_PREFIXES = ("NCCL_", "HF_", "PYTHONPATH", "OMP_", "DS_TP_", "DS_ACCELERATOR", "TRANSFORMERS_", "CUDA_",
                    "TORCH_", "WANDB_")


def carry_environment(env: dict, folder: Path) -> Path:
    """An env file for DeepSpeed's runner (DS_ENV_FILE), never the user's own ~/.deepspeed_env. It may hold
    secrets (HF_TOKEN): `folder` is a private temporary folder, the file is created 0600, and the caller
    removes it when the launcher exits; never output_dir, which is often shared storage."""
    import os
    lines = [f"{k}={v}\n" for k, v in sorted(env.items()) if k.startswith(CARRIED_PREFIXES) and "\n" not in v]
    path = folder / ENV_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(lines))
    return path.resolve()


def resolve_resume(cfg: Config, allow_batch_change: bool = False) -> tuple[str | None, bool, list[str]]:
    """(checkpoint to resume from or None, saved on another layout?, notices); launch/resume.py decides the rest."""
    from ds_tp.launch.resume import plan_resume
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
        return (str(path.resolve()), *plan_resume(cfg, path, state, allow_batch_change))
    if values.get("auto_resume_from_checkpoints"):
        for path in reversed(existing_checkpoints(out)):  # newest complete one whose state reads
            try:
                state = read_state(path)
            except UserError as exc:  # cut short on a filesystem without atomic rename, or a full disk
                _say(f"warning: {exc.problems[0]}; resuming from the checkpoint before it")
                continue
            return (str(path.resolve()), *plan_resume(cfg, path, state, allow_batch_change))
    return None, False, []


def write_run_files(prepared: PreparedRun, cfg: Config, machine_rank: int = 0, folder: Path | None = None) -> Path:
    """The run files ranks read, in output_dir/ds_tp (or `folder`: a dry run's temporary one)."""
    folder = folder or run_dir(prepared.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if machine_rank == 0:  # one writer when output_dir is shared storage
        (folder / RESOLVED_CONFIG).write_text(json.dumps(cfg.values, indent=2, default=str))
        (folder / DEEPSPEED_CONFIG).write_text(json.dumps(prepared.ds_config, indent=2, sort_keys=True))
    path = folder / (RUN_FILE if machine_rank == 0 else f"run-machine{machine_rank}.json")
    prepared.write(path)
    return path


def format_command(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def _say(text: str) -> None:
    click.echo(text, err=True)


def _replaces_a_run(prepared, machine_rank: int, overwrite: bool) -> bool:
    from ds_tp.runfiles import run_files
    return overwrite and machine_rank == 0 and not prepared.resume_from and bool(run_files(Path(prepared.output_dir)))


def print_launch(cfg, prepared, spec, dry_run: bool, machine_rank: int, overwrite: bool) -> None:
    """--dry-run: the plan and the command, with run files in a temporary folder (nothing in output_dir).
    --print-command: the command and the run files it needs, never over a previous run."""
    import tempfile

    from ds_tp.launch.command import launcher_command

    if dry_run:
        from ds_tp.launch.dry_run import print_dry_run
        with tempfile.TemporaryDirectory(prefix="ds-tp-dry-run-") as tmp:
            run_path = write_run_files(prepared, cfg, machine_rank, folder=Path(tmp))
            _say(f"ds-tp: {cfg.layout.product()}; {prepared.total_steps} steps of {prepared.global_batch} sequences "
                 f"({prepared.steps_per_epoch} per epoch); dry run: nothing written in {prepared.output_dir}")
            print_dry_run(prepared)
            click.echo(format_command(launcher_command(spec, str(run_path), Path(tmp))))
        return
    if _replaces_a_run(prepared, machine_rank, overwrite):
        raise UserError(f"{prepared.output_dir}: --print-command with --overwrite: the printed command would train "
                        "over the previous run, which ds-tp only replaces when it launches the run itself "
                        "(drop --print-command, or move the old run away first)")
    run_path = write_run_files(prepared, cfg, machine_rank)
    _say(f"ds-tp: {cfg.layout.product()}; {prepared.total_steps} steps of {prepared.global_batch} sequences "
         f"({prepared.steps_per_epoch} per epoch); run file {run_path}")
    click.echo(format_command(launcher_command(spec, str(run_path.resolve()), run_path.parent)))


def launch(cfg, prepared, spec, device, machine_rank: int, overwrite: bool, verbose: bool = False) -> None:
    """Move a replaced run aside, write the run files, run the launcher (its output and the ranks' in
    output_dir/ds_tp/logs/; rank 0's events on the console), then report how it ended."""
    import shutil
    import tempfile

    from ds_tp.launch.command import launcher_command, rank_environment
    from ds_tp.launch.replace import Replacement
    from ds_tp.launch.run import run_launcher
    from ds_tp.launch.watch import RankWatcher, silence_limit
    from ds_tp.train.preempt import EXIT_PREEMPTED, clear_marker, read_marker

    replaced = (Replacement.move_aside(Path(prepared.output_dir))
                if _replaces_a_run(prepared, machine_rank, overwrite) else None)
    if replaced:
        _say(f"ds-tp: --overwrite: the previous run is in {replaced.aside} until this one logs its first step")
        replaced.watch()
    evaluating = prepared.mode == "evaluate"
    run_path = write_run_files(prepared, cfg, machine_rank)
    cmd = launcher_command(spec, str(run_path.resolve()), run_path.parent)
    _say(f"ds-tp: {cfg.layout.product()}; " + (f"evaluating {prepared.model_path}" if evaluating else
         f"{prepared.total_steps} steps of {prepared.global_batch} sequences ({prepared.steps_per_epoch} per epoch)")
         + f"; run file {run_path}")
    env = rank_environment(spec.per_node, device["accelerator"])
    logs, view, output = console_and_logs(prepared.output_dir, env, machine_rank, verbose)  # before the env file
    private = None
    if spec.hostfile:  # HF_TOKEN and the like: a 0600 file in a private temporary folder, removed below
        private = Path(tempfile.mkdtemp(prefix="ds-tp-env-"))
        env["DS_ENV_FILE"] = str(carry_environment(env, private))
    silent_after = silence_limit(float(prepared.config.get("ddp_timeout") or 1800))
    watcher = RankWatcher(prepared.output_dir, clear=not machine_rank, silent_after=silent_after)
    clear_marker(prepared.output_dir)
    first = failed_rank = kept = None
    try:
        code = run_launcher(cmd, env, watcher, say=_say, output=output)
        watcher.wait_for_ranks(timeout=60)
        if code != 0:  # read now: a replaced run put back (settle) takes this attempt's ds_tp/ with it
            first, failed_rank = watcher.describe(), watcher.first_failed_rank()
            kept = keep_failed_logs(logs) if replaced else None
    finally:
        if view:
            view.stop()
        if output:
            output.close()
        if private:
            shutil.rmtree(private, ignore_errors=True)
        if replaced:
            _say(f"ds-tp: {replaced.settle()}")
            if kept:
                logs = restore_failed_logs(*kept, logs)
    stopped = read_marker(prepared.output_dir)
    if stopped:
        saved = (f"saved {stopped['checkpoint']}" if not stopped.get("why_not_saved") else
                 f"no checkpoint saved ({stopped['why_not_saved']}); "
                 + (f"the last one is {stopped['checkpoint']}" if stopped["checkpoint"] else "there is none yet"))
        _say(f"ds-tp: stopped by {stopped['signal'] or 'a signal'} after step {stopped['step']}; {saved}; "
             "continue with --auto-resume-from-checkpoints")
        sys.exit(EXIT_PREEMPTED)
    if code == 0 and not evaluating and machine_rank == 0:
        report_run(Path(prepared.output_dir))
    if code != 0:
        _say(f"ds-tp: {'evaluation' if evaluating else 'training'} failed (launcher exit code {code})"
             + (f": {first}" if first else "") + f"; every rank's output is in {logs}/")
        if not verbose:
            _say(failure_tail(logs, failed_rank))
        sys.exit(code if 0 < code < 256 else 1)


def keep_failed_logs(logs: Path) -> tuple[Path, str]:
    """--overwrite, and the new run failed before its first step: its logs, moved out of the way of the
    previous run that settle() puts back (the new run's ds_tp/ goes), to be put under that run's logs."""
    import tempfile
    import time
    stamp = time.strftime("%Y%m%d-%H%M%S")
    keep = Path(tempfile.mkdtemp(prefix="ds-tp-failed-logs-", dir=logs.parent.parent))
    if logs.is_dir():
        logs.rename(keep / "logs")
    return keep, stamp


def restore_failed_logs(keep: Path, stamp: str, logs: Path) -> Path:
    import shutil
    target = logs / f"failed-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if (keep / "logs").is_dir():
        (keep / "logs").rename(target)
    shutil.rmtree(keep, ignore_errors=True)
    return target


def report_run(output_dir: Path) -> None:
    """After a finished run: its summary, and its curves as output_dir/training_curves.png (with matplotlib)."""
    from ds_tp import report as rep
    try:
        rows = rep.read_rows(output_dir)
        _say(rep.summary_text(output_dir.name, rows))
        _say(f"ds-tp: curves: {rep.write_curves([(output_dir.name, rows)], output_dir / rep.CURVES_FILE)}")
    except UserError as exc:  # no logged step, or no matplotlib: the run itself is fine
        _say(f"ds-tp: no curves picture: {exc.problems[0]}")
    except Exception as exc:  # noqa: BLE001  (a full disk, a plotting error: the run is still fine)
        _say(f"ds-tp: no curves picture: {type(exc).__name__}: {exc}")


def console_and_logs(output_dir, env: dict, machine_rank: int, verbose: bool):
    """The logs folder (the ranks append to rank-N.log, env DS_TP_LOG_DIR), the console view of rank 0's
    events (machine 0 only; none with --verbose, where the ranks' own lines reach the console) and the
    launcher's log file (None with --verbose)."""
    from ds_tp.launch.console import ConsoleView, live_console
    from ds_tp.runfiles import CONSOLE, LAUNCHER_LOG, logs_dir
    from ds_tp.train.metrics import CONSOLE_ENV
    from ds_tp.train.worker import LOG_DIR_ENV, VERBOSE_ENV

    logs = logs_dir(output_dir).resolve()
    logs.mkdir(parents=True, exist_ok=True)
    env[LOG_DIR_ENV] = str(logs)
    if verbose:
        env[VERBOSE_ENV] = "1"
        return logs, None, None
    view = None
    if machine_rank == 0:
        events = run_dir(output_dir).resolve() / CONSOLE
        events.unlink(missing_ok=True)
        env[CONSOLE_ENV] = str(events)
        view = ConsoleView(events, live=live_console()).start()
    return logs, view, open(logs / LAUNCHER_LOG, "a", encoding="utf-8")


def failure_tail(logs: Path, rank: int | None, lines: int = 15) -> str:
    """The last lines of the failed rank's log (or the launcher's, when no rank is known to have failed)."""
    from ds_tp.runfiles import LAUNCHER_LOG
    path = logs / (f"rank-{rank}.log" if rank is not None else LAUNCHER_LOG)
    if not path.is_file():
        return f"ds-tp: ({path} is missing: the rank did not start)"
    tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"ds-tp: the end of {path}:\n" + "\n".join(f"  {line}" for line in tail)
