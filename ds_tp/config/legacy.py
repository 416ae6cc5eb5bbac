"""Old spellings Axolotl still accepts (renamed keys, sequence_parallel_degree, fsdp_ prefixes, `tokens`,
fractional warmup_steps, message_field_*), read under their new names with a notice; the YAML marks follow
the value, so an error found under the new name points at the line the file wrote."""

from __future__ import annotations

from ds_tp.errors import Finding


def rename_legacy(data: dict, renamed: dict[str, str] | None = None, marks: dict | None = None) -> list[Finding]:
    """Old spellings Axolotl still accepts, renamed with a notice (renamed: old -> new, from the schema).
    marks (key path -> position, from the YAML): a moved value keeps the line of the key the file spells,
    so an error in it found under the new name still points at that line."""
    found: list[Finding] = []
    for old, new in (renamed or {}).items():
        if old not in data:
            continue
        if new in data and data[new] != data[old]:
            found.append(Finding((old,), f"conflicts with {new}", f"{old} is the old name of {new}: keep only {new}"))
            continue
        data.setdefault(new, data.pop(old))
        _carry_marks(marks, (old,), (new,))
        found.append(Finding((old,), f"is the old name of {new}: read as {new}", level="notice"))
    if "sequence_parallel_degree" in data:
        old = data.pop("sequence_parallel_degree")
        if "context_parallel_size" in data and data["context_parallel_size"] != old:
            found.append(
                Finding(
                    ("sequence_parallel_degree",),
                    "conflicts with context_parallel_size",
                    "sequence_parallel_degree is the old name: keep only context_parallel_size",
                )
            )
        else:
            data.setdefault("context_parallel_size", old)
            _carry_marks(marks, ("sequence_parallel_degree",), ("context_parallel_size",))
            found.append(
                Finding(("sequence_parallel_degree",), "is the old name of context_parallel_size", level="notice")
            )
    fsdp = data.get("fsdp_config")
    if isinstance(fsdp, dict):
        for key in [k for k in fsdp if isinstance(k, str) and k.startswith("fsdp_")]:
            fsdp.setdefault(key[5:], fsdp.pop(key))
            _carry_marks(marks, ("fsdp_config", key), ("fsdp_config", key[5:]))
            found.append(
                Finding(("fsdp_config", key), f"read as {key[5:]} (the fsdp_ prefix is dropped)", level="notice")
            )
    if isinstance(data.get("tokens"), dict):  # Axolotl's first releases: tokens held the special tokens
        if data.get("special_tokens") not in (None, data["tokens"]):
            found.append(
                Finding(
                    ("tokens",),
                    "a mapping here is the old spelling of special_tokens, which is also set",
                    "keep only special_tokens",
                )
            )
        else:
            data["special_tokens"] = data.pop("tokens")
            _carry_marks(marks, ("tokens",), ("special_tokens",))
            found.append(
                Finding(
                    ("tokens",),
                    "a mapping here is the old spelling of special_tokens: read as special_tokens",
                    level="notice",
                )
            )
    warm = data.get("warmup_steps")
    if isinstance(warm, float) and 0 < warm < 1:  # HF Trainer reads a warmup_steps below 1 as a ratio
        if data.get("warmup_ratio") not in (None, warm):
            found.append(
                Finding(
                    ("warmup_steps",),
                    f"{warm} is a fraction (a warmup ratio) and conflicts with warmup_ratio",
                    "keep only warmup_ratio",
                )
            )
        else:
            data["warmup_ratio"] = data.pop("warmup_steps")
            _carry_marks(marks, ("warmup_steps",), ("warmup_ratio",))
            found.append(
                Finding(
                    ("warmup_steps",),
                    f"{warm} is below 1: read as warmup_ratio: {warm} (a fraction "
                    "of the total steps, as HF Trainer reads it)",
                    level="notice",
                )
            )
    for list_key in ("datasets", "test_datasets"):
        entries = data.get(list_key)
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict):
                found += _legacy_message_fields(entry, (list_key, index), marks)
    return found


def _carry_marks(marks: dict | None, old: tuple, new: tuple) -> None:
    """The marks of old's subtree copied to new (old keeps its own, for the notice at it); nothing when the
    file also spells new."""
    if marks is None or new in marks:
        return
    for path in [p for p in marks if p[: len(old)] == old]:
        marks.setdefault(new + path[len(old) :], marks[path])


def _legacy_message_fields(entry: dict, where: tuple, marks: dict | None = None) -> list[Finding]:
    """message_field_role / message_field_content: Axolotl's old spellings of message_property_mappings."""
    found: list[Finding] = []
    for prop in ("role", "content"):
        old = f"message_field_{prop}"
        if old not in entry:
            continue
        mappings = entry.get("message_property_mappings")
        if mappings is not None and not isinstance(mappings, dict):
            continue  # the schema reports the mapping's type
        mappings = entry.setdefault("message_property_mappings", {})
        value = entry.pop(old)
        if prop in mappings and mappings[prop] != value:
            found.append(
                Finding(
                    (*where, old),
                    f"conflicts with message_property_mappings.{prop} ({mappings[prop]!r})",
                    f"keep only message_property_mappings: {{{prop}: ...}}",
                )
            )
            continue
        mappings[prop] = value
        _carry_marks(marks, (*where, old), (*where, "message_property_mappings", prop))
        found.append(
            Finding(
                (*where, old),
                f"is the old name of message_property_mappings.{prop}: read as "
                f"message_property_mappings: {{{prop}: {value}}}",
                level="notice",
            )
        )
    return found
