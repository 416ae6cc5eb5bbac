"""`ds-tp` commands. Parse, call, print, exit: every user mistake is one line on stderr, exit 2.

Only the front end is imported at start-up; torch, deepspeed and transformers are imported inside
the commands that train, so validate and translate start fast.
"""
from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path

import click

from ds_tp.errors import EXIT_USER_ERROR, UserError

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["-h", "--help"]}


def _err(text: str) -> None:
    click.echo(text, err=True)


def user_errors(fn):
    """Turn UserError into one line per problem and exit code 2; never a traceback."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            for problem in exc.problems:
                _err(f"error: {problem}")
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            _err("interrupted")
            sys.exit(130)
    return wrapper


def _print_findings(cfg) -> None:
    for problem in cfg.notices:
        _err(f"notice: {problem}")
    for problem in cfg.warnings:
        _err(f"warning: {problem}")


def world_size_from(world_size, num_processes, num_machines, hostfile, cfg_values=None):
    """The world size a command should check the layout against (None: the layout's own product)."""
    if world_size:
        return world_size
    if num_processes:
        return num_processes  # total over all machines, as accelerate counts it
    if hostfile:
        from ds_tp.launch.hostfile import parse_hostfile
        return sum(h.slots for h in parse_hostfile(hostfile))
    return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ds-tp", prog_name="ds-tp")
def main():
    """Train HuggingFace causal LMs with DeepSpeed from Axolotl-style YAML.

    Any config key is also an option on validate/translate/train: --max-steps 2,
    --tensor-parallel-size 2, --special-tokens.pad-token X, --bf16/--no-bf16.
    """


@main.command("config-schema")
def config_schema():
    """Print the JSON Schema of the keys ds-tp understands."""
    from ds_tp.config.schema import schema_text
    click.echo(schema_text())


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--world-size", type=click.IntRange(min=1), help="Check the layout against this many ranks.")
@click.option("--num-processes", type=click.IntRange(min=1), help="Total ranks over all machines.")
@click.pass_context
@user_errors
def validate(ctx, config, world_size, num_processes):
    """Check CONFIG against ds-tp's schema and rules."""
    from ds_tp.config import load_config
    cfg = load_config(config, ctx.args, world_size_from(world_size, num_processes, None, None))
    _print_findings(cfg)
    click.echo(f"{config}: valid; layout {cfg.layout.product()}")


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--world-size", type=click.IntRange(min=1), help="Translate for this many ranks.")
@click.option("--num-processes", type=click.IntRange(min=1), help="Total ranks over all machines (= world size).")
@click.option("--num-machines", type=click.IntRange(min=1), help="Machines (informational; --num-processes is the total).")
@click.option("--hostfile", type=click.Path(path_type=Path), help="World size = the hostfile's total slots.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the JSON here instead of stdout.")
@click.option("--explain", is_flag=True, help="Explain every key and the layout (on stderr).")
@click.pass_context
@user_errors
def translate(ctx, config, world_size, num_processes, num_machines, hostfile, output, explain):
    """Print the DeepSpeed JSON that `ds-tp train` would run for CONFIG."""
    from ds_tp.config import load_config
    from ds_tp.device import probe_without_torch
    from ds_tp.ds_config import build_ds_config

    world = world_size_from(world_size, num_processes, num_machines, hostfile)
    cfg = load_config(config, ctx.args, world)
    _print_findings(cfg)
    device = probe_without_torch()
    translation, warnings = build_ds_config(cfg, device)
    for problem in warnings:
        _err(f"warning: {problem}")
    text = json.dumps(translation.config, indent=2, sort_keys=True) + "\n"
    if output:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{output}: cannot write ({exc.strerror or exc})") from None
    else:
        click.echo(text, nl=False)
    if explain:
        from rich.console import Console
        from ds_tp.explain import print_explain
        print_explain(translation, cfg.layout, device, Console(stderr=True, width=160))


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--num-processes", type=click.IntRange(min=1),
              help="Ranks over all machines (default: the layout's product when dp_shard_size is set, else the GPU count).")
@click.option("--launcher", type=click.Choice(["deepspeed", "torchrun", "accelerate"]), default="deepspeed",
              show_default=True, help="accelerate is accepted and launches through deepspeed.")
@click.option("--num-machines", type=click.IntRange(min=1), default=1, show_default=True,
              help="Machines; with --machine-rank, run the same command once on each.")
@click.option("--machine-rank", type=click.IntRange(min=0), help="This machine's rank (0 = the main process's).")
@click.option("--main-process-ip", default="127.0.0.1", show_default=True, help="Address of machine rank 0.")
@click.option("--main-process-port", type=click.IntRange(1, 65535), help="Master port (default: a free one).")
@click.option("--hostfile", type=click.Path(path_type=Path), help="DeepSpeed hostfile (`host slots=N`): "
              "launch every host from here through the runner.")
@click.option("--multinode-runner", type=click.Choice(["pdsh", "openmpi", "mvapich", "slurm", "mpich", "impi"]),
              default="pdsh", show_default=True, help="The deepspeed runner's back-end with --hostfile.")
@click.option("--use-profiler", is_flag=True, help="Write a torch profiler trace of a few steps to output_dir.")
@click.option("--overwrite", is_flag=True, help="Replace a previous run in output_dir.")
@click.option("--dry-run", is_flag=True, help="Prepare and print the plan, layout and sharding; do not launch.")
@click.option("--print-command", is_flag=True, help="Print the launcher command instead of running it.")
@click.pass_context
@user_errors
def train(ctx, config, num_processes, launcher, num_machines, machine_rank, main_process_ip, main_process_port,
          hostfile, multinode_runner, use_profiler, overwrite, dry_run, print_command):
    """Train CONFIG: prepare data here, then launch ranks with the deepspeed launcher (or torchrun)."""
    from ds_tp.launch.command import LaunchSpec, free_port, launcher_command, rank_environment
    from ds_tp.launch.run import run_launcher
    from ds_tp.launch.train import carry_environment, format_command, hostfile_world, prepare_training

    if launcher == "accelerate":
        _err("notice: --launcher accelerate: ds-tp launches its ranks through the deepspeed launcher")
        launcher = "deepspeed"
    if hostfile and not num_processes:
        num_processes = hostfile_world(hostfile)
    spec = LaunchSpec(launcher=launcher, world=0, num_machines=num_machines, machine_rank=machine_rank,
                      master_addr=main_process_ip, master_port=main_process_port or 0,
                      hostfile=str(hostfile.resolve()) if hostfile else None, runner=multinode_runner)
    cfg, plan, plan_path, world, device = prepare_training(
        config, ctx.args, num_processes, use_profiler=use_profiler, overwrite=overwrite, notify=_print_findings,
        machine_rank=machine_rank or 0, hostfile=hostfile)
    spec.world = world
    spec.check()
    if not spec.master_port:
        if num_machines > 1 and machine_rank is not None:
            raise UserError("command line: --main-process-port is needed when each machine is launched on its own")
        spec.master_port = free_port()
    cmd = launcher_command(spec, str(plan_path.resolve()), plan_path.parent)
    _err(f"ds-tp: {cfg.layout.product()}; {plan.total_steps} steps of {plan.global_batch} sequences "
         f"({plan.steps_per_epoch} per epoch); plan {plan_path}")
    if dry_run or print_command:
        if dry_run:
            from ds_tp.launch.dry_run import print_dry_run
            print_dry_run(plan, cfg)
        click.echo(format_command(cmd))
        return
    env = rank_environment(spec.per_node, device["accelerator"])
    if hostfile:
        env["DS_ENV_FILE"] = str(carry_environment(env, plan_path.parent))
    code = run_launcher(cmd, env)
    if code != 0:
        _err(f"ds-tp: training failed (launcher exit code {code}); see the rank output above")
        sys.exit(code if 0 < code < 256 else 1)


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@click.pass_context
@user_errors
def preprocess(ctx, config):
    """Tokenize, pack and cache CONFIG's datasets (dataset_prepared_path) ahead of training."""
    from ds_tp.config import load_config
    from ds_tp.data import prepare_datasets
    from ds_tp.launch.plan import load_tokenizer, resolve_model_path

    cfg = load_config(config, ctx.args, None)
    _print_findings(cfg)
    tokenizer = load_tokenizer(resolve_model_path(cfg.values["base_model"], cfg.source.parent), cfg.values)
    prepared = prepare_datasets(cfg.values, tokenizer, config_dir=cfg.source.parent)
    state = "already cached" if prepared.cache_hit else "prepared"
    click.echo(f"{state}: {prepared.train_rows} train rows, {prepared.eval_rows} eval rows, "
               f"{prepared.dropped_long} dropped as too long -> {prepared.path}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@user_errors
def export(checkpoint, out):
    """Turn a ds-tp checkpoint folder into a HF model folder (safetensors, config, tokenizer)."""
    from ds_tp.export_checkpoint import export_checkpoint
    export_checkpoint(checkpoint, out)
    click.echo(f"exported {checkpoint} -> {out}")


if __name__ == "__main__":
    main()
