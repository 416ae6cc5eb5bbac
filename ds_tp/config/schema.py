"""The JSON Schema contract (schemas/axolotl.schema.json) and what validation against it reports.

jsonschema does the checking; this module only turns its errors into findings that name the key
path, say what would be valid, and suggest the nearest known key for a typo.
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Iterator

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from ds_tp.errors import Finding
from ds_tp.translators.dataset_types import SUPERVISED_ONLY_OPTIONS, preference_group

from .yaml_marks import format_key_path as format_path

UNSUPPORTED = "x-ds-tp-unsupported"
DEFAULT_NOTICE = "x-ds-tp-default-notice"


@lru_cache(maxsize=1)
def load_schema() -> dict:
    text = resources.files("ds_tp.schemas").joinpath("axolotl.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def schema_text() -> str:
    return json.dumps(load_schema(), indent=2)


def resolve(schema: dict, node: dict) -> dict:
    """Follow a local "$ref" (#/$defs/...) once; schemas here never chain refs."""
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = schema
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def property_schema(path: tuple) -> dict | None:
    """The schema of the property at a key path, or None if the path is not in the schema."""
    schema = load_schema()
    node: dict = schema
    for part in path:
        node = resolve(schema, node)
        child = (
            node.get("items") if isinstance(part, int) else _object_branch(schema, node).get("properties", {}).get(part)
        )
        if child is None:
            return None
        node = child
    return resolve(schema, node)


def _object_branch(schema: dict, node: dict) -> dict:
    """For `anyOf: [string, object]` style properties, the object alternative."""
    if "properties" in node:
        return node
    for alt in node.get("anyOf", []) + node.get("oneOf", []):
        alt = resolve(schema, alt)
        if "properties" in alt:
            return alt
    return node


def validate(data: dict) -> list[Finding]:
    schema = load_schema()
    validator = Draft202012Validator(schema)
    findings: list[Finding] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        findings.extend(_describe(schema, error))
    found = _under_rl(data, _without_adapter(data, list(_unsupported(schema, schema, data, ()))))
    findings.extend(_one_per_group(found))
    return findings


ADAPTER_ONLY = ("lora_", "peft_", "loraplus_")  # keys Axolotl reads only when `adapter` is set


def _without_adapter(data: dict, found: list[tuple[Finding, str | None]]) -> list[tuple[Finding, str | None]]:
    """With no `adapter`, Axolotl trains every weight and never reads lora_* / peft_* keys (old full
    fine-tuning configs often keep them): those are accepted with no effect, not refused."""
    if data.get("adapter"):
        return found
    out = []
    for finding, group in found:
        key = finding.path[0] if len(finding.path) == 1 else None
        if finding.level == "error" and isinstance(key, str) and key.startswith(ADAPTER_ONLY):
            finding = Finding(
                finding.path,
                "valid in Axolotl, no effect in ds-tp: read only with adapter: lora|qlora, "
                "which this config does not set (as in Axolotl)",
                level="ignored",
            )
            group = None
        out.append((finding, group))
    return out


def _under_rl(data: dict, found: list[tuple[Finding, str | None]]) -> list[tuple[Finding, str | None]]:
    """With rl: dpo/ipo/orpo/simpo/kto, Axolotl's preference dataset types read their own keys only: the
    supervised chat_template options in a dataset entry are accepted with no effect, not refused."""
    rl = data.get("rl")
    if not isinstance(rl, str) or preference_group(rl) is None:
        return found
    out = []
    for finding, group in found:
        path = finding.path
        if (
            finding.level == "error"
            and len(path) == 3
            and path[0] in ("datasets", "test_datasets")
            and path[2] in SUPERVISED_ONLY_OPTIONS
        ):
            finding = Finding(
                path,
                f"valid in Axolotl, no effect in ds-tp: a supervised chat_template option; with rl: {rl} "
                "Axolotl's preference dataset types never read it",
                level="ignored",
            )
            group = None
        out.append((finding, group))
    return out


def _describe(schema: dict, error: ValidationError) -> Iterator[Finding]:
    path = tuple(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        for key in sorted(set(error.instance) - set(known)):
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "see `ds-tp config-schema` for the keys ds-tp knows"
            yield Finding(path + (key,), "unknown key", hint)
    elif kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        yield Finding(path, f"missing required key '{missing}'", _short_description(error.schema, missing))
    elif kind == "enum":
        allowed = error.validator_value
        close = difflib.get_close_matches(str(error.instance), [str(a) for a in allowed], n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        yield Finding(path, f"{error.instance!r} is not allowed", hint + f"one of: {_join(allowed)}")
    elif kind in ("anyOf", "oneOf", "type"):
        expected = describe_expected(schema, error.schema)
        yield Finding(path, f"expected {expected}, got {_show(error.instance)}")
    elif kind in (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "pattern",
        "minLength",
        "const",
    ):
        yield Finding(path, f"{_show(error.instance)} is out of range", _range_hint(kind, error.validator_value))
    else:
        yield Finding(path, error.message)


def describe_expected(schema: dict, node: dict) -> str:
    node = resolve(schema, node)
    alternatives = node.get("anyOf") or node.get("oneOf")
    if alternatives:
        return " or ".join(describe_expected(schema, alt) for alt in alternatives)
    if "enum" in node:
        return "one of " + _join(node["enum"])
    if "const" in node:
        return repr(node["const"])
    kind = node.get("type", "a value")
    kinds = kind if isinstance(kind, list) else [kind]
    words = []
    for k in kinds:
        word: str = {
            "object": "a mapping",
            "array": "a list",
            "integer": "an integer",
            "number": "a number",
            "boolean": "true/false",
            "string": "a string",
            "null": "null",
        }.get(k, str(k))
        bounds = [
            f">= {node['minimum']}" if "minimum" in node else "",
            f"> {node['exclusiveMinimum']}" if "exclusiveMinimum" in node else "",
            f"<= {node['maximum']}" if "maximum" in node else "",
        ]
        bounds = [b for b in bounds if b]
        if k == "string" and "pattern" in node:
            bounds.append('numeric like "2e-5"' if "e" in node["pattern"] else f"matching {node['pattern']}")
        words.append(word + (f" ({', '.join(bounds)})" if bounds else ""))
    return " or ".join(words)


def _range_hint(kind: str, value: Any) -> str:
    return {
        "minimum": f"must be >= {value}",
        "maximum": f"must be <= {value}",
        "exclusiveMinimum": f"must be > {value}",
        "exclusiveMaximum": f"must be < {value}",
        "minItems": f"needs at least {value} item(s)",
        "maxItems": f"at most {value} item(s)",
        "pattern": f"must match {value}",
        "minLength": f"at least {value} character(s)",
        "const": f"must be {value!r}",
    }[kind]


def _short_description(node: dict, key: str) -> str:
    """The description's first sentence; a full stop inside brackets ("(e.g. x)") does not end it."""
    desc = node.get("properties", {}).get(key, {}).get("description", "")
    depth = 0
    for i, c in enumerate(desc):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == "." and depth == 0 and desc[i + 1 : i + 2] in (" ", ""):
            return desc[:i]
    return desc


def _show(value: Any) -> str:
    if value is None:
        return "an empty value"
    text = json.dumps(value, default=str, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    kind = {
        dict: "mapping",
        list: "list",
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{kind} {text}"


def _join(values: list) -> str:
    return ", ".join(str(v) for v in values)


def _truthy(value: Any) -> bool:
    return value not in (None, False, "", [], {}, 0)


def _unsupported(schema: dict, node: dict, data: Any, path: tuple) -> Iterator[tuple[Finding, str | None]]:
    """Keys that are valid Axolotl but that ds-tp does not implement, wherever they are set:
    (finding, group). level "ignored": accepted, no effect (listed in one notice); "error": refused."""
    node = resolve(schema, node)
    if isinstance(data, dict):
        props = _object_branch(schema, node).get("properties", {})
        for key, value in data.items():
            sub = props.get(key)
            if sub is None:
                continue
            sub = resolve(schema, sub)
            note = sub.get(UNSUPPORTED)
            if note and _truthy(value) and value not in note.get("allowed", []):
                what = (
                    "valid in Axolotl but not implemented by ds-tp (it changes what is trained)"
                    if note["level"] == "error"
                    else "valid in Axolotl, no effect in ds-tp"
                )
                yield Finding(path + (key,), f"{what}: {note['reason']}", level=note["level"]), note.get("group")
            else:
                yield from _unsupported(schema, sub, value, path + (key,))
    elif isinstance(data, list) and "items" in node:
        for index, item in enumerate(data):
            yield from _unsupported(schema, node["items"], item, path + (index,))


def _one_per_group(found: list[tuple[Finding, str | None]]) -> list[Finding]:
    """Refused keys of one feature (every lora_* of an adapter config) are one line, at the first of them."""
    out: list[Finding] = []
    grouped: dict[str, list[Finding]] = {}
    for finding, group in found:
        group = group or (finding.message if finding.level == "error" else None)  # same reason: one line
        if group and finding.level == "error":
            if group not in grouped:
                grouped[group] = []
                out.append(finding)  # placeholder, replaced below
            grouped[group].append(finding)
        else:
            out.append(finding)
    for group, members in grouped.items():
        first = members[0]
        others = [format_path(m.path) for m in members[1:]]
        merged = Finding(
            first.path, first.message, ("with it: " + ", ".join(others)) if others else first.hint, level="error"
        )
        out[out.index(first)] = merged
    return out


def renamed_keys() -> dict[str, str]:
    """Older Axolotl names -> today's (x-ds-tp-renamed in the schema)."""
    return {k: v["x-ds-tp-renamed"] for k, v in load_schema()["properties"].items() if "x-ds-tp-renamed" in v}


def top_level_defaults() -> dict[str, tuple[Any, bool]]:
    """key -> (default, announce) for top-level properties that carry a default."""
    props = load_schema().get("properties", {})
    return {k: (v["default"], bool(v.get(DEFAULT_NOTICE))) for k, v in props.items() if "default" in v}


def known_paths() -> list[tuple]:
    """Every settable key path (nested objects included), for CLI overrides and suggestions."""
    schema = load_schema()
    out: list[tuple] = []

    def walk(node: dict, path: tuple) -> None:
        node = _object_branch(schema, resolve(schema, node))
        for key, sub in node.get("properties", {}).items():
            out.append(path + (key,))
            sub = resolve(schema, sub)
            if _object_branch(schema, sub).get("properties") and key not in ("datasets", "test_datasets"):
                walk(sub, path + (key,))

    walk(schema, ())
    return out
