"""The prepared-data cache: `<dataset_prepared_path>/<sha256 of every input>/` holding train/, eval/
and meta.json. A folder is complete once it exists under its final name, because it is built
elsewhere and renamed into place; meta.json is written before that rename."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

# Bump when the tokenizing or packing rules change, so old caches are not reused.
FORMAT_VERSION = 4  # 2: min_sample_len, dedup; 3: chat turns end as Axolotl; 4: Axolotl-equal halves and whitespace
META = "meta.json"
HASHED_CFG_KEYS = ("sequence_len", "sample_packing", "pad_to_sequence_len", "train_on_inputs", "val_set_size",
                   "seed", "chat_template", "chat_template_jinja", "special_tokens", "shuffle_merged_datasets",
                   "min_sample_len", "dataset_exact_deduplication", "eot_tokens")


def prepared_root(cfg: dict) -> Path:
    """Axolotl's dataset_prepared_path, default last_run_prepared; relative to the working directory."""
    return Path(cfg.get("dataset_prepared_path") or "last_run_prepared").expanduser()


def tokenizer_digest(tokenizer) -> str:
    """What decides the tokens: the backend's whole definition (or the vocab), special tokens, the
    chat template. Padding/truncation state is left out: it does not change how text is tokenized."""
    parts: dict = {
        "class": type(tokenizer).__name__,
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("padding", None)
        definition.pop("truncation", None)
        parts["backend"] = sha256_text(json.dumps(definition, sort_keys=True))
    else:
        parts["vocab"] = sha256_text(json.dumps(sorted(tokenizer.get_vocab().items())))
    return sha256_text(json.dumps(parts, sort_keys=True, default=str))


def cache_key(cfg: dict, entries: list[dict], source_digests: list[str], tokenizer) -> tuple[str, dict]:
    """(hex key, the inputs it was computed from): those inputs go into meta.json, to explain a miss."""
    inputs = {
        "format_version": FORMAT_VERSION,
        "datasets": [{"entry": entry, "content_sha256": digest} for entry, digest in zip(entries, source_digests)],
        "tokenizer_sha256": tokenizer_digest(tokenizer),
        "cfg": {key: cfg.get(key) for key in HASHED_CFG_KEYS},
    }
    if cfg.get("rl"):  # preference rows: another row format, and the prompt's own limit
        inputs["preference"] = {"rl": cfg.get("rl"), "version": 2,  # KTO's KL pairs are made within micro-batches
                                "micro_batch_size": cfg.get("micro_batch_size") if cfg.get("rl") == "kto" else None}
    return sha256_text(json.dumps(inputs, sort_keys=True, default=str)), inputs


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_prepared(folder: Path) -> bool:
    return (folder / META).is_file()


def read_meta(folder: Path) -> dict:
    return json.loads((folder / META).read_text(encoding="utf-8"))


def write_meta(folder: Path, meta: dict) -> None:
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def publish(built: Path, final: Path) -> bool:
    """Rename a finished folder into place. False when another process (another node preparing the
    same data) got there first: theirs is identical, so it is kept and ours deleted."""
    try:
        os.rename(built, final)
        return True
    except OSError:
        if not final.exists():
            raise
        if is_prepared(final):
            shutil.rmtree(built, ignore_errors=True)
            return False
        # A folder without meta.json under the final name is not ours to trust: set it aside.
        os.rename(final, final.with_name(f".stale-{final.name}-{uuid.uuid4().hex[:8]}"))
        return publish(built, final)
