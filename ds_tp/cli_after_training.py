"""The commands users run after training, Axolotl's shapes: `ds-tp evaluate`, `ds-tp inference`, `ds-tp report`."""
from __future__ import annotations

from pathlib import Path

import click

from ds_tp.cli import PASS_THROUGH, _err, main, plugin_module_option, target_device_option, user_errors


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--num-processes", type=click.IntRange(min=1), help="Ranks (default: as `train` decides).")
@click.option("--launcher", type=click.Choice(["deepspeed", "torchrun"]), default="deepspeed", show_default=True)
@click.option("--verbose", "-v", is_flag=True, help="Show the launcher's and the ranks' own output too.")
@target_device_option
@plugin_module_option
@click.pass_context
@user_errors
def evaluate(ctx, config, num_processes, launcher, verbose, target_device, plugin_modules):
    """Axolotl's evaluate: loss and perplexity of base_model (with lora_model_dir's adapter) on CONFIG's train
    and eval splits, on the config's layout; the figures on the console and in output_dir/eval_summary.csv.
    To evaluate the model a run saved, pass --base-model OUTPUT_DIR (an adapter: --lora-model-dir OUTPUT_DIR)."""
    from ds_tp.cli import _launch_job
    _launch_job(ctx, config, num_processes, launcher, 1, None, None, None, None, "pdsh", False, False, False, False,
                verbose, target_device, plugin_modules, "evaluate")


@main.command(context_settings=PASS_THROUGH)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--lora-model-dir", type=click.Path(path_type=Path), help="The adapter to apply over base_model.")
@click.option("--prompt", help="Answer this prompt and exit (default: read prompts from stdin).")
@click.option("--input", "input_text", help="The input field of an instruction format (alpaca's ### Input:).")
@click.option("--max-new-tokens", type=int, help="Most tokens generated per answer (default 1024, as Axolotl).")
@click.option("--temperature", type=float, help="0 or unset: greedy; > 0: sample as Axolotl does (top_p 0.95, top_k 40).")
@click.pass_context
@user_errors
def inference(ctx, config, lora_model_dir, prompt, input_text, max_new_tokens, temperature):
    """Axolotl's inference: answer prompts with the model CONFIG trained (output_dir's model or adapter, else
    base_model), each prompt laid out as training laid out a row's prompt (the chat template or the dataset's
    prompt format). One-shot with --prompt; else one prompt per line from a terminal, or all of stdin as one."""
    from ds_tp.inference import run_inference
    run_inference(config, ctx.args, lora_model_dir=lora_model_dir, prompt=prompt, max_new_tokens=max_new_tokens,
                  temperature=temperature, input_text=input_text)


@main.command()
@click.argument("output_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="The PNG (default: OUTPUT_DIR/training_curves.png for one run; ./training_curves.png for several).")
@user_errors
def report(output_dirs, output):
    """Training curves (loss and eval loss, lr, grad norm, tokens/s per step) of one or more runs' metrics.jsonl
    as a PNG, several runs overlaid for comparison, and a short text summary of each."""
    from ds_tp import report as rep
    runs = rep.load_runs(list(output_dirs))
    for label, rows in runs:
        click.echo(rep.summary_text(label, rows))
    path = output or (output_dirs[0] / rep.CURVES_FILE if len(output_dirs) == 1 else Path(rep.CURVES_FILE))
    try:
        click.echo(f"curves: {rep.write_curves(runs, path)}")
    except OSError as exc:
        from ds_tp.errors import UserError
        raise UserError(f"cannot write the picture: {exc.strerror or exc}", where=str(path)) from None


def say_what_is_evaluated(cfg, prepared) -> None:
    from ds_tp.runfiles import ADAPTER_FILES, MODEL_FILES
    out = Path(cfg.values.get("output_dir", "./model-out"))
    adapter = bool(cfg.values.get("adapter"))
    saved = all((out / f).is_file() for f in (ADAPTER_FILES if adapter else MODEL_FILES))
    evaluated = Path(cfg.values.get("lora_model_dir") or "") if adapter else Path(prepared.model_path)
    if saved and evaluated.resolve() != out.resolve():
        flag = "--lora-model-dir" if adapter else "--base-model"
        _err(f"notice: evaluating {'the adapter of lora_model_dir' if adapter else 'base_model'} as Axolotl does; "
             f"for the {'adapter' if adapter else 'model'} trained in {out}, add {flag} {out}")
