"""Everything decided before any rank starts (model path, prepared data, step counts, the resolved
run, the final DeepSpeed JSON): prepare_run builds the PreparedRun that ranks read (runfiles.py)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from ds_tp.config import Config, to_problem
from ds_tp.errors import Problem, UserError
from ds_tp.model_config import (
    choose_attention,
    load_model_config,
    load_tokenizer,
    resolve_model_path,
    shape_of,
    tp_plan_problem,
)
from ds_tp.runfiles import PreparedRun, run_files
from ds_tp.translators.model_shape import embedding_rows


def check_output_dir(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to write over another run's results unless resuming or told to (--overwrite). Nothing is
    removed here: with --overwrite the launch moves the old run aside (launch/replace.py)."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise UserError(Problem(f"{output_dir} exists and is not a folder", key="output_dir"))
    ours = run_files(output_dir)
    links = [p.name for p in ours if p.is_symlink()]
    if links:  # writes into them would land outside output_dir
        raise UserError(Problem(f"{output_dir} holds symlinks where ds-tp writes ({', '.join(sorted(links))})",
                                key="output_dir", hint="ds-tp never writes through symlinks: remove them"))
    if ours and not resuming and not overwrite:
        raise UserError(Problem(f"{output_dir} already holds a run ({', '.join(sorted(p.name for p in ours)[:3])}"
                                "...)", key="output_dir", hint="pass --auto-resume-from-checkpoints to continue it, "
                                "--overwrite to replace it, or choose another --output-dir"))


def schedule(cfg: dict, train_rows: int, global_batch: int) -> tuple[int, int]:
    """(steps_per_epoch, total_steps). The last incomplete global batch of an epoch is dropped."""
    steps_per_epoch = train_rows // global_batch
    if steps_per_epoch == 0:
        raise UserError(Problem(f"the training data has {train_rows} rows, fewer than one global batch of "
                                f"{global_batch} (micro x gas x data-parallel ranks)", key="micro_batch_size",
                                hint="lower micro_batch_size or gradient_accumulation_steps, or add data"))
    total = cfg.get("max_steps") or math.ceil(float(cfg.get("num_epochs", 1)) * steps_per_epoch)
    return steps_per_epoch, int(total)


def every(cfg: dict, steps_key: str, per_epoch_key: str, steps_per_epoch: int, total: int) -> int | None:
    """Steps between saves or evals. A value below 1 is a fraction of the total steps (as HF's Trainer reads
    Axolotl's float eval_steps / save_steps)."""
    value = cfg.get(steps_key)
    if value:
        return max(1, math.ceil(value * total)) if value < 1 else int(value)
    if cfg.get(per_epoch_key):
        return max(1, steps_per_epoch // int(cfg[per_epoch_key]))
    return None


def check_unfrozen(cfg: Config, hf_config) -> str | None:
    """unfrozen_parameters against the model's parameter names: a pattern set that matches nothing is
    refused (Axolotl would train nothing); otherwise one line saying how many tensors train."""
    patterns = cfg.values.get("unfrozen_parameters")
    if not patterns:
        return None
    from ds_tp.model_config import parameter_names
    from ds_tp.translators.trainable import split_names
    trained, frozen = split_names(parameter_names(hf_config, cfg.values), patterns)
    if not trained:
        raise UserError(Problem("matches none of the model's parameters, so nothing would train", key="unfrozen_parameters",
                                where=cfg.where(("unfrozen_parameters",)),
                                hint="its parameters are named like " + ", ".join(frozen[:3])))
    return (f"unfrozen_parameters: {len(trained)} of {len(trained) + len(frozen)} parameter tensors train "
            f"(e.g. {trained[0]}); {len(frozen)} are frozen")


def check_new_tokens_train(cfg: Config, adapter, tokens: int, hf_config) -> None:
    """With an adapter, tokens the model has no embedding row for (tokens, new special tokens) get rows that
    only train when the embeddings and the head are in lora_modules_to_save (Axolotl refuses it too)."""
    rows = shape_of(hf_config, "").vocab
    if adapter is None or tokens <= rows or {"embed_tokens", "lm_head"} <= set(adapter.modules_to_save or []):
        return
    key = next((k for k in ("tokens", "special_tokens", "added_tokens_overrides") if cfg.values.get(k)), "adapter")
    raise UserError(Problem(f"the tokenizer has {tokens} tokens and the model {rows} embedding rows: with an adapter "
                            "the new rows would never train", key=key, where=cfg.where((key,)),
                            hint="add lora_modules_to_save: [embed_tokens, lm_head] (Axolotl refuses this too)"))


def resolve_adapter_targets(cfg: Config, hf_config):
    """The adapter with the modules peft will adapt, found on a meta-device model, and the line saying how
    much trains; (None, None) without an adapter. Targets that match nothing are refused at their key."""
    from ds_tp.translators.adapter import resolve_adapter

    adapter, _ = resolve_adapter(cfg.values)
    if adapter is None:
        return None, None
    from ds_tp.train.adapter import adapted_modules
    key = "lora_target_modules" if cfg.values.get("lora_target_modules") else "adapter"
    try:
        targets, adapted, trainable, total = adapted_modules(hf_config, adapter, cfg.values)
    except ValueError as exc:
        raise UserError(Problem(str(exc).splitlines()[0], key=key, where=cfg.where((key,)),
                                hint="name modules of this model, e.g. q_proj, v_proj, or set lora_target_linear")) from None
    if not adapted:
        raise UserError(Problem("matches none of the model's modules", key=key, where=cfg.where((key,))))
    layers = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    note = (f"adapter {adapter.kind}: {trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%): "
            f"{len(adapted)} modules ({', '.join(layers)})" + (" + " + ", ".join(adapter.modules_to_save)
                                                                if adapter.modules_to_save else ""))
    return dataclasses.replace(adapter, resolved_targets=targets if isinstance(targets, str) else list(targets)), note


def check_optimizer_and_schedule(cfg: Config, total: int, own_schedule: bool) -> dict:
    """The schedule with its step counts (translators.schedule's decision, for the run file), after building
    the optimizer and the scheduler once on a one-tensor model: what transformers, torch or bitsandbytes
    would say about them at the first rank's start (a missing package, an lr_scheduler_kwargs key the
    schedule lacks) is said here, at the key, before any rank starts."""
    from ds_tp.train.optimizer import optimizer_problem
    from ds_tp.train.schedule import schedule_problem
    from ds_tp.translators.schedule import resolve_schedule

    values = cfg.values
    schedule, _ = resolve_schedule(values, total)  # its findings were shown by validation
    assert schedule is not None
    problems = []
    for message, keys in ((optimizer_problem(values), ("optim_args", "optimizer")),
                          (None if own_schedule else schedule_problem(schedule, float(values["learning_rate"])),
                           ("lr_scheduler_kwargs", "lr_scheduler"))):
        if message:
            key = next((k for k in keys if values.get(k) is not None), keys[-1])
            problems.append(Problem(message, key=key, where=cfg.where((key,))))
    if problems:
        raise UserError(problems)
    return dataclasses.asdict(schedule)


def prepare_run(cfg: Config, *, device: dict, resume_from: str | None, use_profiler: bool,
                overwrite: bool, check_output: bool = True) -> PreparedRun:
    from ds_tp.config.rules import shape_findings
    from ds_tp.data import prepare_datasets
    from ds_tp.ds_config import build_ds_config
    from ds_tp.train.trackers import check_installed
    from ds_tp.translators.deepspeed import TrainFacts
    from ds_tp.translators.layout import effective_batch

    values = cfg.values
    output_dir = Path(values.get("output_dir", "./model-out"))
    check_installed(values, cfg.where)
    if check_output:
        check_output_dir(output_dir, resuming=bool(resume_from), overwrite=overwrite)
    model_path = resolve_model_path(values["base_model"], cfg.source.parent)
    tokenizer = load_tokenizer(model_path, values)
    hf_config = load_model_config(model_path, values, where=cfg.where(("base_model",)))
    shape = shape_of(hf_config, model_path)
    rows = embedding_rows(len(tokenizer), shape.vocab, bool(values.get("resize_token_embeddings_to_32x")),
                          bool(values.get("shrink_embeddings")))
    resized_note = None
    if rows != shape.vocab:  # the run's shape is the resized one: memory, FLOPs and TP checks read it
        resized_note = (f"token embeddings resized from {shape.vocab} to {rows} rows (tokenizer: {len(tokenizer)} "
                        "tokens" + (", rounded up to a multiple of 32)" if values.get("resize_token_embeddings_to_32x")
                                    else ")"))
        shape = dataclasses.replace(shape, vocab=rows)
    shape_checks = shape_findings(shape, cfg.layout)
    shape_errors = [f for f in shape_checks if f.level == "error"]
    if shape_errors:
        raise UserError([to_problem(cfg.source, cfg.marks, f) for f in shape_errors])
    shape_notes = [f"{f.path[0]}: {f.message}" for f in shape_checks if f.level != "error"]
    trained_note = check_unfrozen(cfg, hf_config)
    adapter, adapter_note = resolve_adapter_targets(cfg, hf_config)
    if cfg.layout.tp > 1:
        why = tp_plan_problem(hf_config, shape)
        if why:
            raise UserError(Problem(why, key="tensor_parallel_size", where=cfg.where(("tensor_parallel_size",)),
                                    hint="use dp_shard_size or context_parallel_size"))
    try:
        attention, attention_note = choose_attention(hf_config, values, cfg.layout.cp, device.get("accelerator", "cpu"))
    except UserError as exc:  # at the key's line in the YAML (or the flag that set it)
        raise UserError([dataclasses.replace(p, where=p.where or cfg.where((p.key,))) for p in exc.problems]) from None
    check_new_tokens_train(cfg, adapter, len(tokenizer), hf_config)
    try:
        prepared = prepare_datasets(values, tokenizer, config_dir=cfg.source.parent)
    except UserError as exc:
        raise cfg.at_keys(exc) from None
    global_batch = effective_batch(values["micro_batch_size"], values["gradient_accumulation_steps"], cfg.layout)
    steps_per_epoch, total = schedule(values, prepared.train_rows, global_batch)
    facts = TrainFacts(hidden_size=shape.hidden, total_steps=total)
    translation, _ = build_ds_config(cfg, device, facts, model=shape)
    assert translation.run is not None
    run = translation.run.with_adapter(adapter) if adapter else translation.run
    run = dataclasses.replace(run, attention=attention)
    lr_schedule = check_optimizer_and_schedule(cfg, total, own_schedule="scheduler" in translation.config)
    logging_steps = values.get("logging_steps") or max(min(int(0.005 * total), 10), 1)
    notes = [f"{prepared.train_rows} training rows ({'cached' if prepared.cache_hit else 'prepared'} in "
             f"{prepared.path}), {prepared.dropped_long} dropped as longer than sequence_len"
             + (f", {prepared.dropped_untrained} with no trained token" if prepared.dropped_untrained else "")]
    notes += [note for note in (resized_note, trained_note, adapter_note, attention_note, *shape_notes) if note]
    return PreparedRun(config=values, run=run.to_dict(), ds_config=translation.config,
                       model_path=model_path, prepared_path=str(prepared.path), output_dir=str(output_dir),
                       train_rows=prepared.train_rows, eval_rows=prepared.eval_rows, global_batch=global_batch,
                       steps_per_epoch=steps_per_epoch, total_steps=total, logging_steps=logging_steps,
                       save_steps=every(values, "save_steps", "saves_per_epoch", steps_per_epoch, total),
                       eval_steps=every(values, "eval_steps", "evals_per_epoch", steps_per_epoch, total)
                       if prepared.eval_rows else None, schedule=lr_schedule, resume_from=resume_from, use_profiler=use_profiler,
                       notes=notes, plugin_modules=cfg.plugin_modules)
