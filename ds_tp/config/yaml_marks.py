"""Read a YAML file into plain data plus a table of where every key sits (file:line:col).

PyYAML's composed node tree carries marks; we construct the data from that same tree, so each
key path maps to the line and column of its key. safe_load semantics only: no Python tags.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

from ds_tp.errors import Problem, UserError

KeyPath = tuple  # ("datasets", 0, "type")
MAX_CONFIG_BYTES = 8 * 1024 * 1024


def format_key_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_config_text(path: Path) -> str:
    """The file's text, or one clear error for a missing, huge, binary or non-UTF-8 file."""
    try:
        if path.is_dir():
            raise UserError(f"{path}: is a directory, not a YAML config")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: {len(raw)} bytes is too large for a config (limit {MAX_CONFIG_BYTES})")
    if b"\x00" in raw:
        raise UserError(f"{path}: binary file (contains NUL bytes), not a YAML config")
    body = raw.removeprefix(codecs.BOM_UTF8)  # decoded alone, so the error's offset is into the file's lines
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {exc.start + len(raw) - len(body)})") from None
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise UserError(f"{path}: empty config (expected a mapping with base_model, datasets, ...)")
    return text


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps the composed node so we can read marks."""


def load_yaml_with_marks(path: Path) -> tuple[dict, dict[KeyPath, tuple[int, int]]]:
    """Parse a config file. Returns (data, marks) where marks[key_path] = (line, col), 1-based."""
    text = read_config_text(path)
    loader = None
    try:
        loader = _Loader(text)  # the reader rejects control characters already here
        node = loader.get_single_node()
        if node is None:
            raise UserError(f"{path}: empty config")
        marks: dict[KeyPath, tuple[int, int]] = {}
        problems: list[Problem] = []
        _collect_marks(node, (), marks, problems, path)
        if problems:
            raise UserError(problems)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        raise UserError(Problem(f"invalid YAML: {what}", where=where)) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise UserError(
            f"{path}:{line}: invalid YAML: control character U+{exc.character:04X} is not allowed"
        ) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise UserError(f"{path}: invalid YAML: {first}") from None
    except RecursionError:
        raise UserError(f"{path}: YAML nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise UserError(Problem(f"the top level must be a mapping of keys (got {kind})", where=f"{path}:1:1"))
    return data, marks


def _collect_marks(node: yaml.Node, path: KeyPath, marks: dict, problems: list, file: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            where = f"{file}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}"
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                if key_node.tag == "tag:yaml.org,2002:merge":
                    problems.append(Problem("YAML merge keys (<<) are not supported in configs", where=where))
                    continue
                problems.append(Problem(f"keys must be plain strings (got {key_node.value!r})", where=where))
                continue
            key = key_node.value
            child = path + (key,)
            if key in seen:
                problems.append(
                    Problem(f"duplicate key (first at line {seen[key]})", where=where, key=format_key_path(child))
                )
            seen[key] = key_node.start_mark.line + 1
            marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _collect_marks(value_node, child, marks, problems, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = path + (index,)
            marks[child] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _collect_marks(item, child, marks, problems, file)
