"""DeepSpeed JSONs under the names Axolotl ships in its deepspeed_configs/ folder, written for ds-tp.

A config that says `deepspeed: deepspeed_configs/zero3_bf16.json` where no such file exists gets
ds-tp's file of that name (with a notice); `ds-tp fetch deepspeed_configs [DIR]` writes them out.
"auto" values are ds-tp's to fill, as in Axolotl's. The torch_compile variants carry no compile block:
ds-tp compiles through `torch_compile: true`.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def names() -> list[str]:
    return sorted(p.name for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def preset_text(name: str) -> str | None:
    """The preset JSON's text for a file name such as zero3_bf16.json, or None."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8") if name in names() else None


def write_all(folder: Path) -> list[Path]:
    """Write every preset into folder; an existing file is never overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names():
        target = folder / name
        if not target.exists():
            target.write_text(preset_text(name) or "", encoding="utf-8")
            written.append(target)
    return written
