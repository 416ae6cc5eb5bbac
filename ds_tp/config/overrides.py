"""Command-line overrides: every schema key is also a flag, dashes for underscores, as Axolotl has.

--max-steps 2   --learning-rate=0.5   --bf16 / --no-bf16   --special-tokens.pad-token X
"""

from __future__ import annotations

import difflib

import yaml

from ds_tp.errors import Problem, UserError

from .schema import known_paths, property_schema


def flag_for(path: tuple) -> str:
    return "--" + ".".join(str(p).replace("_", "-") for p in path)


def _types(node: dict) -> set[str]:
    kinds: set[str] = set()
    for alt in [node] + node.get("anyOf", []) + node.get("oneOf", []):
        kind = alt.get("type")
        kinds.update(kind if isinstance(kind, list) else [kind] if kind else [])
    return kinds


def _coerce(raw: str, node: dict):
    """The value a flag string stands for, guided by the schema's type (validation comes later)."""
    kinds = _types(node)
    if kinds == {"string"}:
        return raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        return raw
    if isinstance(value, (int, float)) and not isinstance(value, bool) and "number" in kinds:
        return float(value) if "integer" not in kinds or isinstance(value, float) else value
    if value is None or (isinstance(value, (dict, list)) and not kinds & {"object", "array"}):
        return raw
    return value


def _named_values(node: dict) -> list[str]:
    """The string values a key also takes besides true/false (gradient_checkpointing: offload)."""
    return [str(v) for option in [node, *node.get("anyOf", [])] for v in option.get("enum", [])]


def parse_overrides(args: list[str]) -> list[tuple[tuple, object, str]]:
    """[(key_path, value, flag)] from leftover CLI args; unknown flags are one error each."""
    paths = {flag_for(p): p for p in known_paths()}
    out: list[tuple[tuple, object, str]] = []
    problems: list[Problem] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--"):
            problems.append(
                Problem(f"unexpected argument {arg!r}", where="command line", hint="overrides look like --key value")
            )
            continue
        flag, eq, raw = arg.partition("=")
        negated = flag.startswith("--no-") and flag not in paths and "--" + flag[5:] in paths
        key_flag = "--" + flag[5:] if negated else flag.replace("_", "-")
        path = paths.get(key_flag)
        if path is None:
            close = difflib.get_close_matches(key_flag, list(paths), n=1, cutoff=0.7)
            problems.append(
                Problem(
                    f"unknown option {flag}",
                    where="command line",
                    hint=f"did you mean {close[0]}?" if close else "see ds-tp COMMAND --help",
                )
            )
            if not eq and i < len(args) and not args[i].startswith("--"):
                i += 1
            continue
        node = property_schema(path) or {}
        boolean = "boolean" in _types(node)
        if negated:
            if not boolean:
                problems.append(Problem(f"{flag} only exists for true/false keys", where="command line"))
                continue
            out.append((path, False, flag))
            continue
        if not eq:
            nxt = args[i] if i < len(args) else None
            if boolean and (
                nxt is None
                or nxt.startswith("--")
                or nxt.lower() not in ("true", "false", "auto", "1", "0", "yes", "no", *_named_values(node))
            ):
                out.append((path, True, flag))
                continue
            if nxt is None:
                problems.append(Problem(f"{flag} needs a value", where="command line"))
                continue
            raw = nxt
            i += 1
        out.append((path, _coerce(raw, node), flag))
    if problems:
        raise UserError(problems)
    return out


def apply_overrides(data: dict, marks: dict, overrides: list[tuple[tuple, object, str]]) -> None:
    for path, value, flag in overrides:
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
        marks[path] = f"command line {flag}"
