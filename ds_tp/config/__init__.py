"""Config front end: YAML (with marks) -> overrides -> schema -> rules -> layout.

`load_config` raises one UserError listing every error in the file at once, each located at the
file:line:col of its key; warnings and notices come back on the Config for the CLI to print.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ds_tp.errors import Finding, Problem, UserError
from ds_tp.translators.layout import Layout, resolve_layout, resolve_world

from . import rules
from .empty import drop_empty
from .legacy import rename_legacy
from .overrides import apply_overrides, parse_overrides
from .schema import renamed_keys, top_level_defaults, validate
from .yaml_marks import format_key_path, load_yaml_with_marks


@dataclass
class Config:
    values: dict
    source: Path
    layout: Layout
    marks: dict = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)
    notices: list[Problem] = field(default_factory=list)
    user_deepspeed: dict | None = None
    plugin_modules: list[str] = field(default_factory=list)  # plugins the command line allowed to import

    def where(self, path: tuple) -> str:
        return locate(self.source, self.marks, path)

    def at_keys(self, exc: "UserError") -> "UserError":
        """exc with every problem that names a key but no place put at that key's line in this config."""
        import re

        def path_of(key: str) -> tuple:
            return tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", key))

        return UserError(
            [
                dataclasses.replace(p, where=self.where(path_of(p.key))) if p.key and not p.where else p
                for p in exc.problems
            ]
        )


def locate(source: Path, marks: dict, path: tuple) -> str:
    """file:line:col of the nearest key on the path that the YAML (or the command line) set."""
    for end in range(len(path), 0, -1):
        mark = marks.get(tuple(path[:end]))
        if isinstance(mark, str):
            return mark
        if mark:
            return f"{source}:{mark[0]}:{mark[1]}"
    return str(source)


def to_problem(source: Path, marks: dict, finding: Finding) -> Problem:
    return Problem(
        finding.message, where=locate(source, marks, finding.path), key=format_key_path(finding.path), hint=finding.hint
    )


def load_config(
    path: str | Path,
    overrides: list[str] | tuple = (),
    world_size: int | None = None,
    plugin_modules: tuple | list = (),
    gpu_count: int | None = None,
) -> Config:
    """world_size: the ranks asked for (--num-processes, a hostfile's slots); without it the world is
    resolved by layout.resolve_world from the config and gpu_count (the ranks' GPUs per machine)."""
    source = Path(path)
    data, marks = load_yaml_with_marks(source)
    drop_empty(data, marks)  # before overrides: a flag always sets a value
    apply_overrides(data, marks, parse_overrides(list(overrides)))
    cloud = rules.cloud_config(data)
    if cloud is not None:
        raise UserError([to_problem(source, marks, cloud)])
    findings = rename_legacy(data, renamed_keys(), marks)
    schema_findings = validate(data)
    findings += schema_findings
    bad = {f.path[0] for f in schema_findings if f.level == "error" and f.path}
    bad |= {f.path[0] for f in findings if f.level == "error" and f.path}
    findings += rules.exclusive(data, bad)
    bad |= {f.path[0] for f in findings if f.level == "error" and f.path}
    defaults = top_level_defaults()
    defaulted = {key for key in defaults if key not in data}
    findings += rules.normalise(data, bad, defaults)
    if "plugins" not in bad:  # before cross_field: known plugins switch ds-tp settings on
        from ds_tp.plugins import plugin_findings

        findings += plugin_findings(data, plugin_modules)
    findings += rules.cross_field(data, bad, defaulted)
    layout = None
    if not bad & {"dp_replicate_size", "dp_shard_size", "tensor_parallel_size", "context_parallel_size"}:
        layout, layout_findings = resolve_layout(data, resolve_world(data, world_size, gpu_count))
        findings += layout_findings
        if layout is not None:
            findings += rules.layout_findings(data, layout)
    if layout is not None and not any(f.level == "error" for f in findings):
        findings += rules.model_shape_checks(data, layout, source.parent)
    user_ds, ds_findings = _user_deepspeed(data, source.parent, bad)
    findings += ds_findings
    errors = [to_problem(source, marks, f) for f in findings if f.level == "error"]
    if errors:
        raise UserError(errors)
    assert layout is not None
    return Config(
        values=data,
        source=source,
        layout=layout,
        marks=marks,
        user_deepspeed=user_ds,
        plugin_modules=[p for p in data.get("plugins") or [] if p in plugin_modules],
        warnings=[to_problem(source, marks, f) for f in findings if f.level == "warning"],
        notices=[to_problem(source, marks, f) for f in findings if f.level == "notice"]
        + ignored_summary(source, marks, [f for f in findings if f.level == "ignored"]),
    )


def ignored_summary(source: Path, marks: dict, ignored: list[Finding]) -> list[Problem]:
    """Every accepted-but-no-effect key in one notice: the keys and their lines, not a line per key."""
    if not ignored:
        return []
    keys = []
    for f in ignored:
        mark = marks.get(tuple(f.path))
        line = f" (line {mark[0]})" if isinstance(mark, tuple) else ""
        keys.append(format_key_path(f.path) + line)
    return [
        Problem(
            f"{len(keys)} Axolotl key(s) accepted with no effect on what ds-tp trains: {', '.join(keys)}",
            where=str(source),
            hint="`ds-tp config-schema` gives the reason for each",
        )
    ]


def _user_deepspeed(data: dict, config_dir: Path, bad: set[str]) -> tuple[dict | None, list[Finding]]:
    value = data.get("deepspeed")
    if value is None or "deepspeed" in bad:
        return None, []
    if isinstance(value, dict):
        return value, []
    candidates = [Path(value), config_dir / value]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        from ds_tp.deepspeed_configs import names, preset_text

        preset = preset_text(Path(value).name)
        if preset is not None:  # Axolotl's shipped names resolve to ds-tp's own file of that name
            return json.loads(preset), [
                Finding(
                    ("deepspeed",),
                    f"{value!r} is not here: using ds-tp's "
                    f"{Path(value).name} (`ds-tp fetch deepspeed_configs` writes them out)",
                    level="notice",
                )
            ]
        return None, [
            Finding(
                ("deepspeed",),
                f"no such file {value!r}",
                "a DeepSpeed JSON file, an inline mapping, or one of Axolotl's names: " + ", ".join(names()),
            )
        ]
    try:
        loaded = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, [Finding(("deepspeed",), f"{found}: not valid JSON ({exc})")]
    if not isinstance(loaded, dict):
        return None, [Finding(("deepspeed",), f"{found}: the JSON must be an object")]
    return loaded, []
