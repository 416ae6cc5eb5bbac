"""The README's fidelity claim is what the differential tier checks: every option it calls equal to
Axolotl is exercised in tests/axolotl_diff, its template names are the ones ds-tp knows, and what it
calls refused is refused by the schema. Runs without Axolotl installed (it reads files only)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ds_tp.translators.chat_templates import NAMED_TEMPLATES
from ds_tp.translators.dataset_types import IMPLEMENTED

ROOT = Path(__file__).resolve().parents[2]


def fidelity_block() -> tuple[str, str, str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- fidelity:", 1)[1].split("<!-- /fidelity -->", 1)[0]
    equal, rest = block.split("**Differs, on purpose**", 1)
    differs, refused = rest.split("**Not implemented, refused at their key**", 1)
    return equal, differs, refused


def names(text: str) -> set[str]:
    return {n for n in re.findall(r"`([^`]+)`", text) if re.fullmatch(r"[a-z_0-9.]+", n)}


def test_every_option_called_equal_is_exercised_by_the_tier():
    equal, _, _ = fidelity_block()
    tier = (ROOT / "tests/axolotl_diff/test_same_tokens.py").read_text()
    claimed = names(equal)
    assert {"alpaca", "completion", "chat_template", "roles", "sample_packing"} <= claimed
    missing = sorted(n for n in claimed if not re.search(rf"\b{re.escape(n)}\b", tier))
    assert not missing, f"README calls these equal to Axolotl but the tier never uses them: {missing}"


def test_template_names_and_types_are_what_ds_tp_implements():
    equal, _, _ = fidelity_block()
    by_name = re.search(r"`chat_template` by name \(([^)]*)\)", equal).group(1)
    assert names(by_name) == set(NAMED_TEMPLATES)
    assert set(IMPLEMENTED.values()) <= names(equal)


def test_what_is_called_refused_is_refused_by_the_schema():
    _, _, refused = fidelity_block()
    schema = json.loads((ROOT / "schemas/axolotl.schema.json").read_text())

    def options(node):
        if isinstance(node, dict):
            if "roles_to_train" in node and "split_thinking" in node:
                yield node
            for value in node.values():
                yield from options(value)
        elif isinstance(node, list):
            for value in node:
                yield from options(value)

    [dataset] = list(options(schema))
    listed = names(refused)
    assert listed
    for name in listed:
        assert "x-ds-tp-unsupported" in dataset[name], f"README calls {name} refused; the schema accepts it"
    for name in ("roles", "drop_system_message", "roles_to_train"):
        assert "x-ds-tp-unsupported" not in dataset[name]
