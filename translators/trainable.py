"""Which parameters train: all of them, or those matched by Axolotl's unfrozen_parameters.

Axolotl's reading of a pattern, kept here: the pattern is a regex matched at the start of the
parameter's name (re.match, so `^` is optional and `$` anchors the end), and a `.` not followed by
`+` is a literal dot (so `model.layers.1` never matches `model_layers_1`). Every parameter that no
pattern matches is frozen. Axolotl's row-range suffix (`embed_tokens.weight$[:32000]`, which zeroes
some rows' gradients with a hook) is refused: under ZeRO-3 a parameter's gradient is a flat shard,
so rows cannot be picked out the same way.

Pure (no torch): validate checks the patterns, the worker and the preparing process apply them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")


def compile_pattern(pattern: str) -> re.Pattern:
    return re.compile(re.sub(r"\.(?!\+)", r"\\.", pattern))


def pattern_problems(patterns: list) -> list[tuple[int, str]]:
    """(index, message) for each pattern ds-tp cannot apply as Axolotl would."""
    found = []
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            found.append((index, "expected a non-empty regex string"))
            continue
        if RANGE.match(pattern):
            found.append(
                (
                    index,
                    "a row range ([start:end]) is not implemented: under ZeRO-3 a gradient is a flat shard, "
                    "so single rows cannot be frozen; unfreeze the whole parameter",
                )
            )
            continue
        try:
            compile_pattern(pattern)
        except re.error as exc:
            found.append((index, f"not a valid regex: {exc}"))
    return found


def trainable_matcher(patterns: list[str] | None) -> Callable[[str], bool]:
    """name -> trains; every name trains when there are no patterns."""
    if not patterns:
        return lambda name: True
    compiled = [compile_pattern(p) for p in patterns]
    return lambda name: any(regex.match(name) for regex in compiled)


def trainable_summary(cfg: dict) -> str:
    """ResolvedRun.trainable: what trains, in one line."""
    patterns = cfg.get("unfrozen_parameters")
    return "full" if not patterns else "unfrozen_parameters: " + ", ".join(patterns)


def split_names(names: Iterable[str], patterns: list[str] | None) -> tuple[list[str], list[str]]:
    """(trained, frozen) parameter names."""
    trains = trainable_matcher(patterns)
    trained: list[str] = []
    frozen: list[str] = []
    for name in names:
        (trained if trains(name) else frozen).append(name)
    return trained, frozen
