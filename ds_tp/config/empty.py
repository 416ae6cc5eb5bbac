"""Empty means unset, as in Axolotl: `wandb_project:` (YAML null) is a key that was not given.

Axolotl reads configs into pydantic models whose fields are Optional, so a key written with no value
takes its default. ds-tp drops such keys (and null list items) at every level before validation, so
defaults, exclusive-key rules and "unknown key" checks see exactly what an absent key would give.
"""

from __future__ import annotations

from typing import Any


def drop_empty(data: dict, marks: dict) -> dict:
    """data without null values, recursively; marks (key path -> position) renumbered for lists
    whose null items were removed. Both are changed in place; data is returned."""
    _walk(data, (), marks)
    return data


def _walk(node: Any, path: tuple, marks: dict) -> Any:
    if isinstance(node, dict):
        for key in [k for k, v in node.items() if v is None]:
            del node[key]
            _forget(marks, path + (key,))
        for key, value in node.items():
            _walk(value, path + (key,), marks)
    elif isinstance(node, list):
        kept = [i for i, v in enumerate(node) if v is not None]
        if len(kept) != len(node):
            _renumber(marks, path, kept)
            node[:] = [node[i] for i in kept]
        for index, value in enumerate(node):
            _walk(value, path + (index,), marks)
    return node


def _forget(marks: dict, prefix: tuple) -> None:
    for key in [k for k in marks if k[: len(prefix)] == prefix]:
        del marks[key]


def _renumber(marks: dict, path: tuple, kept: list[int]) -> None:
    """Marks below path[i] move to path[new index of i]; marks of removed items go."""
    new_index = {old: new for new, old in enumerate(kept)}
    depth = len(path)
    moved = {}
    for key in [k for k in marks if len(k) > depth and k[:depth] == path and isinstance(k[depth], int)]:
        value = marks.pop(key)
        if key[depth] in new_index:
            moved[path + (new_index[key[depth]],) + key[depth + 1 :]] = value
    marks.update(moved)
