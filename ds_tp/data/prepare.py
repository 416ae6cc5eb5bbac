"""Config datasets -> tokenized, split, packed rows saved on disk, once per distinct set of inputs.

Runs in the launching process before ranks start; ranks only call load_prepared on the result.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets

from ds_tp.data.cache import cache_key, is_prepared, prepared_root, publish, read_meta, write_meta
from ds_tp.data.diagnose import reason
from ds_tp.data.formats import formatter_for
from ds_tp.data.packing import build_rows, eval_count, shuffled
from ds_tp.data.prompts import IGNORE, BadRow, Example, Formatter
from ds_tp.data.sources import Source, Table, content_digest, load_tables, locate, quiet_datasets
from ds_tp.errors import Problem, UserError
from ds_tp.progress import task

ROW_FEATURES = datasets.Features({
    "input_ids": datasets.List(datasets.Value("int32")),
    "labels": datasets.List(datasets.Value("int32")),
    "position_ids": datasets.List(datasets.Value("int32")),
    "length": datasets.Value("int32"),
})


@dataclass
class PreparedData:
    path: Path  # the cache folder: train/, eval/ (when val_set_size > 0), meta.json
    train_rows: int
    eval_rows: int
    cache_hit: bool
    dropped_long: int  # examples longer than sequence_len, left out (Axolotl's drop_long_seq)
    dropped_untrained: int = 0  # examples with every label masked (Axolotl's drop_no_trainable_tokens)


def prepare_datasets(cfg: dict, tokenizer, *, config_dir: Path) -> PreparedData:
    """Tokenize, split, pack and save cfg["datasets"], or find them already prepared.

    A tokenizer without a pad token pads with its EOS token (the trainer does the same); the
    padding is masked out of the loss either way."""
    entries = list(cfg.get("datasets") or [])
    if not entries:
        raise UserError(Problem("no datasets to prepare", key="datasets"))
    sources = [locate(entry, index, Path(config_dir)) for index, entry in enumerate(entries)]
    if cfg.get("rl"):
        from ds_tp.data.preference import preference_formatter
        formatters = [preference_formatter(entry, index, cfg, tokenizer) for index, entry in enumerate(entries)]
    else:
        formatters = [formatter_for(entry, index, cfg, tokenizer) for index, entry in enumerate(entries)]
    hub_tables = {s.index: load_tables(s) for s in sources if s.kind == "hub"}  # their fingerprint is the digest
    digests = [hub_digest(hub_tables[s.index]) if s.kind == "hub" else content_digest(s) for s in sources]
    key, inputs = cache_key(cfg, entries, digests, tokenizer)
    root = prepared_root(cfg).resolve()  # ranks may not share the launcher's working directory
    final = root / key
    if is_prepared(final):
        meta = read_meta(final)
        return PreparedData(final, meta["train_rows"], meta["eval_rows"], True, meta["dropped_long"],
                            meta.get("dropped_untrained", 0))
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".building-{key[:12]}-", dir=root))
    try:
        meta = build(cfg, tokenizer, sources, formatters, hub_tables, scratch)
        meta["inputs"] = inputs
        meta["key"] = key
        write_meta(scratch / "out", meta)
        publish(scratch / "out", final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta = read_meta(final)  # ours, or an identical one another process published first
    return PreparedData(final, meta["train_rows"], meta["eval_rows"], False, meta["dropped_long"],
                        meta.get("dropped_untrained", 0))


def build(cfg: dict, tokenizer, sources: list[Source], formatters: list[Formatter], hub_tables: dict,
          scratch: Path) -> dict:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if cfg.get("rl"):  # preference pairs (or KTO's labelled completions): never packed
        from ds_tp.data.preference_rows import build_preference
        pairs = [example for source, formatter in zip(sources, formatters)
                 for table in hub_tables.get(source.index) or load_tables(source, scratch / "reader-cache")
                 for example in tokenize_table(table, formatter)]
        where = ", ".join(s.location for s in sources)
        dropped = sum(getattr(f, "dropped_long", 0) for f in formatters)
        return {**build_preference(cfg, pairs, where, scratch / "out", dropped), "pad_id": pad_id}
    sequence_len = int(cfg.get("sequence_len") or 512)
    examples: list[Example] = []
    dropped = 0
    shortest_dropped = None
    for source, formatter in zip(sources, formatters):
        tables = hub_tables.get(source.index) or load_tables(source, scratch / "reader-cache")
        keep_long = source.entry.get("type") == "completion"  # completion cuts documents itself
        for table in tables:
            for ids, labels in tokenize_table(table, formatter):
                if len(ids) > sequence_len and not keep_long:
                    dropped += 1
                    shortest_dropped = min(shortest_dropped or len(ids), len(ids))
                    continue
                examples.append((ids, labels))
    examples, too_short = drop_short(examples, int(cfg.get("min_sample_len") or 2))
    before = len(examples)
    examples = [e for e in examples if any(label != IGNORE for label in e[1])]  # as Axolotl: nothing to learn
    untrained = before - len(examples)
    duplicates = 0
    if cfg.get("dataset_exact_deduplication"):
        examples, duplicates = deduplicate(examples)
    if not examples and untrained:
        raise UserError(Problem("every example has all its labels masked, so there is nothing to train on",
                                key="datasets", where=", ".join(s.location for s in sources),
                                hint="check train_on_inputs, roles_to_train and the prompt format"))
    if not examples and too_short:
        raise UserError(Problem(f"every example is shorter than min_sample_len {cfg.get('min_sample_len') or 2} tokens",
                                key="min_sample_len", where=", ".join(s.location for s in sources)))
    if not examples:
        raise UserError(Problem(f"every example is longer than sequence_len {sequence_len} tokens "
                                f"(the shortest has {shortest_dropped})", key="sequence_len",
                                where=", ".join(s.location for s in sources),
                                hint="raise sequence_len or shorten the rows"))
    seed = int(cfg.get("seed") if cfg.get("seed") is not None else 42)
    if cfg.get("shuffle_merged_datasets", True):
        examples = shuffled(examples, seed)
    held_out = eval_count(float(cfg.get("val_set_size") or 0), len(examples))
    if held_out >= len(examples):
        raise UserError(Problem(f"{cfg.get('val_set_size')} leaves no training examples out of {len(examples)}",
                                key="val_set_size", hint="a fraction below 1, or a count below the examples"))
    train, evaluation = examples[:len(examples) - held_out], examples[len(examples) - held_out:]
    layout = dict(sequence_len=sequence_len, sample_packing=bool(cfg.get("sample_packing")),
                  pad_to_sequence_len=bool(cfg.get("pad_to_sequence_len")), pad_id=pad_id)
    out = scratch / "out"
    train_rows = save_rows(build_rows(train, **layout), out / "train")
    eval_rows = save_rows(build_rows(evaluation, **layout), out / "eval") if evaluation else 0
    return {"train_rows": train_rows, "eval_rows": eval_rows, "dropped_long": dropped, "dropped_short": too_short,
            "dropped_untrained": untrained,
            "duplicates_removed": duplicates,
            "examples": {"train": len(train), "eval": len(evaluation)}, "pad_id": pad_id, **layout}


def drop_short(examples: list[Example], min_len: int) -> tuple[list[Example], int]:
    """Examples of at least min_len tokens (Axolotl's min_sample_len, default 2: a one-token example has no
    next token to learn), and how many were dropped."""
    kept = [e for e in examples if len(e[0]) >= min_len]
    return kept, len(examples) - len(kept)


def deduplicate(examples: list[Example]) -> tuple[list[Example], int]:
    """dataset_exact_deduplication: identical examples (same tokens, same labels) kept once, the first."""
    seen: set[tuple] = set()
    kept = []
    for ids, labels in examples:
        key = (tuple(ids), tuple(labels))
        if key not in seen:
            seen.add(key)
            kept.append((ids, labels))
    return kept, len(examples) - len(kept)


def tokenize_table(table: Table, formatter: Formatter) -> list[Example]:
    """Every row's examples; the first bad row is reported (with how many others are bad) as one line."""
    examples: list[Example] = []
    first_bad: tuple[int, BadRow] | None = None
    bad_rows = 0
    rows = iter(table.rows)
    with task(f"tokenizing {Path(table.name).name}", len(table.rows)) as advance:
        for number in range(1, len(table.rows) + 1):
            try:
                row = next(rows)
            except Exception as exc:  # the reader gave up on this row (bad bytes, bad types)
                raise UserError(f"cannot read this row: {reason(exc)}", where=f"{table.name}: row {number}")
            try:
                examples.extend(formatter(row))
            except BadRow as bad:
                bad_rows += 1
                first_bad = first_bad or (number, bad)
            advance(1)
    if first_bad:
        number, bad = first_bad
        field = f"field '{bad.field}': " if bad.field else ""
        more = f" ({bad_rows - 1} more bad rows)" if bad_rows > 1 else ""
        raise UserError(f"{field}{bad.message}{more}", where=f"{table.name}: row {number}")
    return examples


def save_rows(columns: dict, folder: Path) -> int:
    rows = datasets.Dataset.from_dict(columns, features=ROW_FEATURES)
    with quiet_datasets():
        rows.save_to_disk(str(folder))
    return len(rows)


def hub_digest(tables: list[Table]) -> str:
    """A Hub dataset is named by its datasets fingerprint (it changes when the cached data does)."""
    return ",".join(getattr(t.rows, "_fingerprint", "") or str(len(t.rows)) for t in tables)


def load_prepared(path: Path) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, eval or None) from a folder prepare_datasets returned."""
    path = Path(path)
    if not is_prepared(path):
        raise UserError(f"{path}: not a prepared dataset folder (no meta.json); prepare the datasets first")
    train = datasets.load_from_disk(str(path / "train"))
    evaluation = datasets.load_from_disk(str(path / "eval")) if (path / "eval").exists() else None
    return train, evaluation
