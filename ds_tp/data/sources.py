"""Where a `datasets:` entry's rows come from, and reading them with HF `datasets`.

A path is looked up as a local file or folder (relative paths: cwd first, then the config's
folder); anything that does not exist locally and does not look like a file name is a Hub dataset.
Every read failure becomes one UserError line naming the file (and line, when it is known).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from ds_tp.data.diagnose import describe_read_failure, non_utf8_problem
from ds_tp.errors import Problem, UserError

DS_TYPE_BY_EXTENSION = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet",
                        ".arrow": "arrow", ".txt": "text"}
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class Source:
    """One dataset entry, located. kind: files (local data files), saved (a save_to_disk folder), hub."""

    index: int
    entry: dict
    kind: str
    location: str  # the resolved path, or the hub name
    files: list[Path] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"datasets[{self.index}]"


@dataclass
class Table:
    """Rows of one file (or one saved/hub dataset), with the name errors should show."""

    name: str
    rows: datasets.Dataset


def locate(entry: dict, index: int, config_dir: Path) -> Source:
    raw = entry.get("path")
    if not isinstance(raw, str) or not raw:
        raise UserError(Problem("missing dataset path", key=f"datasets[{index}].path"))
    path = local_path(raw, config_dir)
    if path is None:
        if looks_like_file(raw, entry):
            raise UserError(Problem(f"no such file or folder {raw!r}", key=f"datasets[{index}].path",
                                    hint=f"looked in {Path.cwd()} and {config_dir}"))
        return Source(index, entry, "hub", raw)
    if path.is_dir():
        if any((path / marker).exists() for marker in SAVED_DATASET_MARKERS):
            return Source(index, entry, "saved", str(path), sorted(p for p in path.rglob("*") if p.is_file()))
        files = folder_data_files(path, entry)
        if not files:
            raise UserError(Problem(f"folder {raw!r} holds no data files", key=f"datasets[{index}].path",
                                    hint="expected " + ", ".join(sorted(DS_TYPE_BY_EXTENSION)) + " files"))
        return Source(index, entry, "files", str(path), files)
    return Source(index, entry, "files", str(path), [path])


def local_path(raw: str, config_dir: Path) -> Path | None:
    path = Path(raw).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, Path(config_dir) / path]
    return next((c for c in candidates if c.exists()), None)


def looks_like_file(raw: str, entry: dict) -> bool:
    return (Path(raw).suffix.lower() in DS_TYPE_BY_EXTENSION or raw.startswith((".", "/", "~"))
            or entry.get("ds_type") is not None or raw.count("/") > 1)


def folder_data_files(folder: Path, entry: dict) -> list[Path]:
    """The data files of a plain folder: data_files when given, else every known data file in it."""
    if entry.get("data_files"):
        names = entry["data_files"] if isinstance(entry["data_files"], list) else [entry["data_files"]]
        return [folder / name for name in names]
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DS_TYPE_BY_EXTENSION
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def content_digest(source: Source) -> str:
    """sha256 over the bytes (and relative names) of a local source's files."""
    digest = hashlib.sha256()
    root = Path(source.location)
    for path in source.files:
        name = path.relative_to(root) if root.is_dir() else Path(path.name)
        digest.update(str(name).encode() + b"\0")
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise UserError(Problem(f"cannot read {str(path)!r}: {exc.strerror}", key=f"{source.key}.path"))
    return digest.hexdigest()


def load_tables(source: Source, cache_dir: Path | None = None) -> list[Table]:
    """The rows of a source. Local files are read into memory with their builder cache in
    `cache_dir` (a scratch folder the caller deletes), so nothing piles up in ~/.cache; Hub
    datasets use the HF cache as usual."""
    entry = source.entry
    split = entry.get("split") or "train"
    with quiet_datasets():
        if source.kind == "saved":
            return [Table(source.location, pick_split(datasets.load_from_disk(source.location), split, source))]
        if source.kind == "hub":
            return [Table(source.location, load_hub(source, split))]
        return [Table(str(path), load_file(path, source, split, cache_dir)) for path in source.files]


def load_file(path: Path, source: Source, split: str, cache_dir: Path | None) -> datasets.Dataset:
    ds_type = source.entry.get("ds_type") or DS_TYPE_BY_EXTENSION.get(path.suffix.lower())
    if ds_type is None:
        raise UserError(Problem(f"cannot tell the format of {path.name!r}", key=f"{source.key}.ds_type",
                                hint="set ds_type: json, csv, parquet, arrow or text"))
    if not path.is_file():
        raise UserError(Problem(f"no such file {str(path)!r}", key=f"{source.key}.data_files"))
    if is_blank(path):
        raise UserError(f"{path}: the file is empty")
    if ds_type in ("json", "csv", "text"):
        problem = non_utf8_problem(path)
        if problem:
            raise UserError(f"{path}: {problem}")
    try:
        rows = datasets.load_dataset(ds_type, data_files=str(path), split=split, keep_in_memory=True,
                                     cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # whatever the reader raised, the user gets one line about their file
        raise UserError(describe_read_failure(path, ds_type, exc))
    if len(rows) == 0:
        raise UserError(f"{path}: the file has no rows")
    return rows


def load_hub(source: Source, split: str) -> datasets.Dataset:
    entry = source.entry
    try:
        return datasets.load_dataset(source.location, name=entry.get("name"), split=split,
                                     data_files=entry.get("data_files"))
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = ("offline (HF_HUB_OFFLINE): download it first, e.g. `hf download --repo-type dataset "
                f"{source.location}`" if offline else "a local file/folder or a Hub dataset id")
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(Problem(f"cannot load {source.location!r}: not a local file or folder, and from the "
                                f"Hub: {reason}", key=f"{source.key}.path", hint=hint))


def pick_split(loaded, split: str, source: Source) -> datasets.Dataset:
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UserError(Problem(f"no split {split!r} in {source.location!r}", key=f"{source.key}.split",
                                    hint="splits: " + ", ".join(loaded)))
        return loaded[split]
    return loaded


def is_blank(path: Path) -> bool:
    """Empty or only whitespace (checked for small files only: big ones are not blank)."""
    size = path.stat().st_size
    return size == 0 or (size < 4096 and not path.read_bytes().strip())


@contextlib.contextmanager
def quiet_datasets():
    """No progress bars or 'failed to load' log lines from datasets: failures are reported as UserError."""
    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
