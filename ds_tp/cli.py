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

from ds_tp.errors import EXIT_USER_ERROR, Problem, UserError

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


def requested_world(world_size=None, num_processes=None, hosts=None) -> int | None:
    """The ranks the command line asks for (None: layout.resolve_world decides from the config)."""
    return world_size or num_processes or (sum(h.slots for h in hosts) if hosts else None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ds-tp", prog_name="ds-tp")
def main():
    """Train HuggingFace causal LMs with DeepSpeed from Axolotl-style YAML.

    Any config key is also an option on validate/translate/train: --max-steps 2,
    --tensor-parallel-size 2, --special-tokens.pad-token X, --bf16/--no-bf16.
    """


target_device_option = click.option(
    "--target-device", type=click.Choice(["cpu", "cuda", "cuda-fp16"]),
    help="The ranks' device when it is not this machine's (cuda: bf16-capable GPUs; cuda-fp16: older ones).")

plugin_module_option = click.option(
    "--plugin-module", "plugin_modules", multiple=True, metavar="NAME",
    help="Allow this `plugins:` entry to be imported on every rank (repeatable).")

@main.command("config-schema")
def config_schema():
    """Print the JSON Schema of the keys ds-tp understands."""
    from ds_tp.config.schema import schema_text
    click.echo(schema_text())


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--world-size", type=click.IntRange(min=1), help="Check the layout against this many ranks.")
@click.option("--num-processes", type=click.IntRange(min=1), help="Total ranks over all machines.")
@plugin_module_option
@click.pass_context
@user_errors
def validate(ctx, config, world_size, num_processes, plugin_modules):
    """Check CONFIG against ds-tp's schema and rules."""
    from ds_tp.config import load_config
    from ds_tp.device import probe_without_torch
    cfg = load_config(config, ctx.args, requested_world(world_size, num_processes), plugin_modules,
                      gpu_count=probe_without_torch()["count"])
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
@target_device_option
@plugin_module_option
@click.pass_context
@user_errors
def translate(ctx, config, world_size, num_processes, num_machines, hostfile, output, explain, target_device,
              plugin_modules):
    """Print the DeepSpeed JSON that `ds-tp train` would run for CONFIG (same world, same device rules)."""
    from ds_tp.config import load_config
    from ds_tp.device import named_target, probe_without_torch
    from ds_tp.ds_config import build_ds_config

    hosts = None
    if hostfile:
        from ds_tp.launch.hostfile import parse_hostfile
        hosts = parse_hostfile(hostfile)
    device = probe_without_torch()
    if target_device:
        device = named_target(target_device, hosts[0].slots if hosts else device["count"] or 1)
    cfg = load_config(config, ctx.args, requested_world(world_size, num_processes, hosts), plugin_modules,
                      gpu_count=device["count"])
    _print_findings(cfg)
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
        print_explain(translation, Console(stderr=True, width=160))


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--num-processes", type=click.IntRange(min=1),
              help="Ranks over all machines (default: the layout's product when dp_shard_size is set, else the GPU count).")
@click.option("--launcher", type=click.Choice(["deepspeed", "torchrun", "accelerate"]), default="deepspeed",
              show_default=True, help="accelerate is accepted and launches through deepspeed.")
@click.option("--num-machines", type=click.IntRange(min=1), default=1, show_default=True,
              help="Machines; with --machine-rank, run the same command once on each.")
@click.option("--machine-rank", type=click.IntRange(min=0), help="This machine's rank (0 = the main process's).")
@click.option("--main-process-ip", help="Address of machine rank 0 (needed with --machine-rank; with --hostfile "
              "the first host's own address, `hostname -I` over ssh, by default; else 127.0.0.1).")
@click.option("--main-process-port", type=click.IntRange(1, 65535), help="Master port (default: a free one).")
@click.option("--hostfile", type=click.Path(path_type=Path), help="DeepSpeed hostfile (`host slots=N`): "
              "launch every host from here through the runner.")
@click.option("--multinode-runner", type=click.Choice(["pdsh", "openmpi", "mvapich", "slurm", "mpich", "impi"]),
              default="pdsh", show_default=True, help="The deepspeed runner's back-end with --hostfile.")
@click.option("--use-profiler", is_flag=True, help="Write a torch profiler trace of a few steps to output_dir.")
@click.option("--overwrite", is_flag=True, help="Replace a previous run in output_dir.")
@click.option("--dry-run", is_flag=True, help="Prepare and print the plan, layout and sharding; do not launch.")
@click.option("--print-command", is_flag=True, help="Print the launcher command instead of running it.")
@click.option("--verbose", "-v", is_flag=True, help="Show the launcher's and the ranks' own output (DeepSpeed, torch) "
              "on the console too; it always goes to output_dir/ds_tp/logs/.")
@click.option("--allow-batch-change", is_flag=True, help="Resume even when the global batch differs from the "
              "checkpoint's (by default gradient_accumulation_steps is changed to keep it, or the resume is refused).")
@target_device_option
@plugin_module_option
@click.pass_context
@user_errors
def train(ctx, config, num_processes, launcher, num_machines, machine_rank, main_process_ip, main_process_port,
          hostfile, multinode_runner, use_profiler, overwrite, dry_run, print_command, verbose, allow_batch_change,
          target_device, plugin_modules):
    """Train CONFIG: prepare data here, then launch ranks with the deepspeed launcher (or torchrun).

    Cheap checks (flags, layout, hostfile, ports) come before data preparation; --dry-run and
    --print-command remove nothing; --overwrite moves the old run aside until the new one has started."""
    _launch_job(ctx, config, num_processes, launcher, num_machines, machine_rank, main_process_ip, main_process_port,
                hostfile, multinode_runner, use_profiler, overwrite, dry_run, print_command, verbose, target_device,
                plugin_modules, "train", allow_batch_change)


def _launch_job(ctx, config, num_processes, launcher, num_machines, machine_rank, main_process_ip, main_process_port,
                hostfile, multinode_runner, use_profiler, overwrite, dry_run, print_command, verbose, target_device,
                plugin_modules, mode: str, allow_batch_change: bool = False):
    import os

    from ds_tp.launch.command import LaunchSpec, free_port
    from ds_tp.launch.console import quiet_libraries
    from ds_tp.launch.train import launch, plan_training, print_launch
    from ds_tp.launch.train import target_device as resolve_target

    if not verbose:
        quiet_libraries()
    if launcher == "accelerate":
        _err("notice: --launcher accelerate: ds-tp launches its ranks through the deepspeed launcher")
        launcher = "deepspeed"
    hosts = None
    if hostfile:
        from ds_tp.launch.hostfile import parse_hostfile
        hosts = parse_hostfile(hostfile)
    per_node = num_machines > 1 and machine_rank is not None
    spec = LaunchSpec(launcher=launcher, world=0, num_machines=num_machines, machine_rank=machine_rank,
                      master_addr=main_process_ip or (None if hostfile or per_node else "127.0.0.1"),
                      master_port=main_process_port or 0,
                      hostfile=str(hostfile.resolve()) if hostfile else None, runner=multinode_runner)
    spec.check()  # the flags alone, before probing hosts or reading data
    device = resolve_target(target_device, hosts, hostfile, multinode_runner, dict(os.environ), _err)
    if hosts and multinode_runner == "pdsh" and not main_process_ip:
        from ds_tp.launch.ssh_check import first_host_address
        spec.master_addr = first_host_address(hostfile, hosts[0], dict(os.environ))

    def with_world(cfg) -> None:  # the config is loaded: check the launch for its world, then prepare data
        if mode == "evaluate" and cfg.values.get("rl"):
            raise UserError(Problem(f"rl: {cfg.values['rl']}: `ds-tp evaluate` does not evaluate preference runs (their "
                                    "reference would be the evaluated model itself); a run's eval_rewards/* and "
                                    "eval_loss are in its metrics.jsonl", key="rl", where=cfg.where(("rl",))))
        _print_findings(cfg)
        spec.world = cfg.layout.world
        spec.check()

    cfg, prepared, world, device = plan_training(
        config, ctx.args, num_processes, use_profiler=use_profiler, overwrite=overwrite, notify=with_world,
        machine_rank=machine_rank or 0, hostfile=hostfile, hosts=hosts, plugin_modules=plugin_modules,
        device=device, mode=mode, allow_batch_change=allow_batch_change)
    if mode == "evaluate":
        from ds_tp.cli_after_training import say_what_is_evaluated
        say_what_is_evaluated(cfg, prepared)
    spec.master_port = spec.master_port or free_port()
    if dry_run or print_command:
        print_launch(cfg, prepared, spec, dry_run, machine_rank or 0, overwrite)
        return
    launch(cfg, prepared, spec, device, machine_rank or 0, overwrite, verbose)


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@plugin_module_option
@click.pass_context
@user_errors
def preprocess(ctx, config, plugin_modules):
    """Tokenize, pack and cache CONFIG's datasets (dataset_prepared_path) ahead of training."""
    from ds_tp.config import load_config
    from ds_tp.data import prepare_datasets
    from ds_tp.model_config import load_tokenizer, resolve_model_path

    cfg = load_config(config, ctx.args, None, plugin_modules)
    _print_findings(cfg)
    tokenizer = load_tokenizer(resolve_model_path(cfg.values["base_model"], cfg.source.parent), cfg.values)
    try:
        prepared = prepare_datasets(cfg.values, tokenizer, config_dir=cfg.source.parent)
    except UserError as exc:
        raise cfg.at_keys(exc) from None
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


@main.command("merge-lora", context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--lora-model-dir", type=click.Path(path_type=Path),
              help="The adapter folder (default: lora_model_dir, else output_dir).")
@click.pass_context
@user_errors
def merge_lora_command(ctx, config, lora_model_dir):
    """Fold CONFIG's trained LoRA adapter into base_model's weights: a HF model in output_dir/merged."""
    from ds_tp.config import load_config
    from ds_tp.merge_lora import merge_lora
    from ds_tp.model_config import load_tokenizer, resolve_model_path

    cfg = load_config(config, ctx.args, None)  # the layout does not matter to a merge
    values = cfg.values
    adapter_dir = Path(lora_model_dir or values.get("lora_model_dir") or values.get("output_dir", "./model-out"))
    out = Path(values.get("output_dir", "./model-out")) / "merged"
    model_path = resolve_model_path(values["base_model"], cfg.source.parent)
    changed = merge_lora(model_path, adapter_dir, out, load_tokenizer(model_path, values))
    click.echo(f"merged {adapter_dir} into {changed} weights of {values['base_model']} -> {out} "
               "(AutoModelForCausalLM.from_pretrained loads it)")


@main.command()
@click.argument("what", type=click.Choice(["deepspeed_configs"]))
@click.argument("dest", required=False, type=click.Path(path_type=Path))
@user_errors
def fetch(what, dest):
    """Write ds-tp's files of Axolotl's names: `fetch deepspeed_configs [DIR]` (default ./deepspeed_configs)."""
    from ds_tp.deepspeed_configs import names, write_all
    folder = dest or Path("deepspeed_configs")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    written = write_all(folder)
    kept = len(names()) - len(written)
    click.echo(f"wrote {len(written)} DeepSpeed configs to {folder}" + (f" ({kept} already there, kept)" if kept else ""))


def _positive(option: str, text: str | None, kind=int):
    """A positive number from an option, or one line naming the option (click's errors take several)."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 < value < float("inf"):  # also refuses nan
        raise UserError(f"{option}: expected a positive {'integer' if kind is int else 'number'}, got {text!r}")
    return value


def _plan_model_shape(cfg, preset: str | None) -> tuple[dict, str]:
    from ds_tp.model_config import planning_shape_source
    return planning_shape_source(cfg, preset)


def _short_layout(layout) -> str:
    return f"rep {layout.dp_replicate} x shard {layout.dp_shard} x tp {layout.tp} x cp {layout.cp}"


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--gpus", metavar="N", help="GPUs to plan for, over all machines.  [required]")
@click.option("--gpu-memory", default="80", show_default=True, metavar="GIB", help="Memory of one GPU in GiB.")
@click.option("--gpus-per-node", default="8", show_default=True, metavar="N",
              help="GPUs per machine: weight all-gathers and hpZ groups are judged against it.")
@click.option("--model-shape", metavar="PRESET", help="The model's shape when base_model is a hub id ds-tp does "
              "not know: tinyllama-1.1b, llama-3.1-8b, llama-3.1-70b, llama-3.1-405b.")
@click.option("--show", default="8", show_default=True, metavar="N", help="Ranked layouts to print.")
@plugin_module_option
@click.pass_context
@user_errors
def plan(ctx, config, gpus, gpu_memory, gpus_per_node, model_shape, show, plugin_modules):
    """Estimate memory per GPU for CONFIG and rank the layouts that fit on --gpus GPUs."""
    from rich.console import Console
    from rich.table import Table

    from ds_tp.config import load_config
    from ds_tp.translators import memory
    from ds_tp.translators.layout import resolve_layout

    if gpus is None:
        raise UserError("--gpus: required (how many GPUs to plan for)")
    gpus, mem = _positive("--gpus", gpus), _positive("--gpu-memory", gpu_memory, float)
    per_node, show = _positive("--gpus-per-node", gpus_per_node), _positive("--show", show)
    cfg = load_config(config, ctx.args, None, plugin_modules)
    _print_findings(cfg)
    model, source = _plan_model_shape(cfg, model_shape)
    shape = memory.ModelShape.from_config(model, source)
    layout = cfg.layout
    if layout.dp_shard_inferred:  # dp_shard_size unset: it is world / the rest, as train would infer it
        layout = resolve_layout(cfg.values, gpus)[0] or layout
    own = memory.estimate_memory(shape, cfg.values, layout)
    ranked = memory.all_layouts(shape, cfg.values, gpus, mem, gpus_per_node=per_node)
    gib = lambda n: f"{n / memory.GIB:.1f} GiB" if n >= memory.GIB / 10 else f"{n / 2**20:.1f} MiB"  # noqa: E731
    out = Console(width=160)
    v = cfg.values
    scale = next((s for s in ((1e9, "B"), (1e6, "M")) if shape.params >= s[0]), (1e3, "K"))
    checkpointing = "on" if v.get("gradient_checkpointing") else "off"
    moe = (f", MoE: {shape.experts} experts, {shape.experts_per_token} a token, "
           f"{shape.active_params / scale[0]:.2f}{scale[1]} active") if shape.experts else ""
    tied = ", tied embeddings" if shape.tied else ""
    out.print(f"model: {shape.params / scale[0]:.2f}{scale[1]} parameters{moe}{tied} ({source}); {own.precision}, "
              f"{v.get('optimizer', 'adamw_torch_fused')}, sequence {v.get('sequence_len')} x micro batch "
              f"{v.get('micro_batch_size')}, gradient checkpointing {checkpointing}")
    table = Table(title=f"config's layout: {layout.product()} (per GPU)")
    parts = ("weights", "grads", "optimizer", "hpZ copy", "ZeRO buffers", "activations", "logits", "overhead")
    for column in parts + ("total", f"fits {mem:g} GiB"):
        table.add_column(column, justify="right")
    values = (own.parameters, own.gradients, own.optimizer, own.hpz_copy, own.buffers, own.activations,
              own.logits, own.overhead)
    table.add_row(*map(gib, values), gib(own.total), "yes" if own.total <= mem * memory.GIB else "NO")
    out.print(table)
    for note in own.notes:
        out.print(f"note: {note}")
    if layout.world != gpus:
        out.print(f"note: the config's layout uses {layout.world} GPUs, not --gpus {gpus}")
    fitting = [r for r in ranked if r.fits]
    table = Table(title=f"layouts of {gpus} GPUs that fit in {mem:g} GiB, best first" if fitting else
                  f"nothing fits on {gpus} x {mem:g} GiB; the closest misses")
    for column, justify in (("#", "right"), ("layout", "left"), ("per GPU", "right"), ("why", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for index, row in enumerate((fitting or ranked)[:show], start=1):
        table.add_row(str(index), _short_layout(row.estimate.layout), gib(row.estimate.total), row.why)
    out.print(table)
    if not fitting:
        found = memory.smallest_fitting(shape, cfg.values, gpus, mem, gpus_per_node=per_node)
        out.print(f"smallest GPU count that fits: {found[0]} GPUs, {_short_layout(found[1].estimate.layout)} "
                  f"({gib(found[1].estimate.total)})" if found else "no layout fits on up to 8192 GPUs")
    out.print(f"estimates, not measurements: {memory.FRAMEWORK_OVERHEAD_GIB:g} GiB per GPU assumed for CUDA/NCCL/"
              f"allocator; {memory.MARGIN:.0%} margin asked for; see docs/plan.md")


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", required=False, type=click.Path(path_type=Path))
@click.option("--hostfile", type=click.Path(path_type=Path), help="DeepSpeed hostfile: GPUs per host = its slots.")
@plugin_module_option
@click.pass_context
@user_errors
def doctor(ctx, config, hostfile, plugin_modules):
    """Versions, GPUs, interconnect and environment; with CONFIG, warn about slow TP/CP placement."""
    from ds_tp.doctor import doctor_report

    if config is not None and str(config).startswith("-"):  # click took an override for CONFIG
        raise UserError(f"command line: {config}: overrides need a CONFIG before them")
    for line in doctor_report(config, ctx.args, hostfile, plugin_modules):
        click.echo(line)


from ds_tp import cli_after_training  # noqa: E402,F401  (registers evaluate, inference, report)

if __name__ == "__main__":
    main()
