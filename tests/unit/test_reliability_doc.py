"""docs/reliability.md states what the tests assert: its rows are exactly the fault/does/lost docstrings of the
tests (scripts/reliability_report.py regenerates it by running them), none stale, none missing."""
import importlib.util

from tests.conftest import ROOT


def test_reliability_doc_rows_are_the_tests_docstrings():
    spec = importlib.util.spec_from_file_location("reliability_report", ROOT / "scripts" / "reliability_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    want = {(c["fault"], c["does"], c["lost"], f"`{c['file']}::{c['test']}`") for c in report.cases()}
    rows = [line for line in (ROOT / "docs" / "reliability.md").read_text().splitlines()
            if line.startswith("| ") and "`tests/" in line]
    got = set()
    for line in rows:
        cells = [c.strip().replace("\\|", "|") for c in line.strip("|").replace("\\|", "\0").split("|")]
        cells = [c.replace("\0", "|") for c in cells]
        assert cells[-1] == "passed", line
        got.add(tuple(cells[:4]))
    assert len(rows) == len(want) and got == want, (got ^ want)
