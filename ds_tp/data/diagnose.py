"""Why a data file could not be read, as one line that names the file and, when it can be found,
the line. The reader's own exceptions rarely say where; a second, simple pass over the bytes does."""
from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

MAX_SCANNED_BYTES = 512 << 20  # the diagnosis reads the file whole; past this size it reports less


def describe_read_failure(path: Path, ds_type: str, exc: BaseException) -> str:
    detail = None
    if ds_type in ("json", "csv", "text") and path.stat().st_size <= MAX_SCANNED_BYTES:
        data = path.read_bytes()
        detail = utf8_problem(data)
        if detail is None and ds_type == "json":
            detail = json_problem(data.decode("utf-8"))
    return f"{path}: {detail or f'cannot read as {ds_type}: {reason(exc)}'}"


def non_utf8_problem(path: Path) -> str | None:
    """Where a text file stops being UTF-8, read in blocks (readers only notice on the bad row)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines_before = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                problem = utf8_problem(block)  # bad byte inside this block (a split character is not bad)
                if problem is not None:
                    line, rest = problem.removeprefix("line ").split(":", 1)
                    return f"line {int(line) + lines_before}:{rest}"
                return "not UTF-8 text; save the file as UTF-8"
            lines_before += block.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return f"line {lines_before + 1}: ends in the middle of a UTF-8 character; save the file as UTF-8"
    return None


def utf8_problem(data: bytes) -> str | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); save the file as UTF-8"
    return None


def json_problem(text: str) -> str | None:
    """The first malformed spot of a JSON file (one document) or JSON Lines file (one object a line).
    Lines end at newlines only, as the reader and editors count them (str.splitlines would also
    break at form feeds and U+2028)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):  # one document: its own error has the line
            return f"line {exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})"
    else:
        if isinstance(document, dict) or (isinstance(document, list) and all(isinstance(i, dict) for i in document)):
            return big_integer_problem(text) or (None if any(document) else "every row is an empty JSON object")
        return "expected JSON objects (one per row)"
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"line {number}: malformed JSON: {exc.msg} (column {exc.colno})"
        if not isinstance(value, dict):
            return f"line {number}: expected a JSON object per line, got {type(value).__name__}"
        rows.append(value)
    return big_integer_problem(text) or (None if any(rows) else "every row is an empty JSON object")


# A JSON string, or an integer literal outside one (not the fraction or exponent of a float)
_STRING_OR_INTEGER = re.compile(r'"(?:[^"\\]|\\.)*"|(?<![\d.eE+-])(-?\d+)(?![\d.eE])')


def big_integer_problem(text: str) -> str | None:
    """The first integer the reader's fallback (ujson) cannot hold: it says only "Value is too big!" and
    a position inside its own buffer."""
    for match in _STRING_OR_INTEGER.finditer(text):
        if match[1] and not -(2**63) <= int(match[1]) < 2**64:
            line = text.count("\n", 0, match.start()) + 1
            return (f"line {line}: integer {match[1][:30]} does not fit in 64 bits, so the JSON reader "
                    "cannot read it; write it as a string or a float")
    return None


def reason(exc: BaseException) -> str:
    """The most telling line of a reader's exception (datasets wraps the real one as __cause__)."""
    while exc.__cause__ is not None and str(exc).startswith("An error occurred while generating"):
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
