"""The differential tier: Axolotl 0.21.0 itself (installed with --no-deps, see scripts/install_axolotl.sh)
tokenizes the same rows with the same tokenizer as ds-tp. Skipped when Axolotl is not installed,
except under CI, where .ci/run installs it and a missing Axolotl is a failure."""
import os

import pytest

os.environ["AXOLOTL_DO_NOT_TRACK"] = "1"  # Axolotl's telemetry is opt-out; a test never phones home
try:
    import axolotl.utils.data.wrappers  # noqa: F401
    HAVE_AXOLOTL = True
except ImportError as exc:  # pragma: no cover - depends on the environment
    HAVE_AXOLOTL, WHY = False, str(exc)


def pytest_collection_modifyitems(config, items):
    if HAVE_AXOLOTL:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"CI runs the Axolotl differential tier, but Axolotl does not import: {WHY}")
    skip = pytest.mark.skip(reason="Axolotl 0.21.0 is not installed (bash scripts/install_axolotl.sh)")
    for item in items:
        if "axolotl_diff" in str(item.fspath):
            item.add_marker(skip)
