"""DeepSpeed hostfiles (`host slots=N`, # comments), checked before anything is launched."""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from ds_tp.errors import Problem, UserError


class Host(NamedTuple):
    name: str
    slots: int
    line: int


LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.\-\[\]:]+)\s+slots\s*=\s*(?P<slots>\S+)$")


def parse_hostfile(path: str | Path) -> list[Host]:
    """Hosts in file order; every bad line is one problem naming file:line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such hostfile") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read hostfile ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(lines_of(raw[: exc.start].decode("utf-8")))
        raise UserError(f"not UTF-8 text (byte {exc.start}), not a hostfile", where=f"{path}:{line}") from None
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    problems: list[Problem] = []
    for number, text_line in enumerate(lines_of(text), start=1):
        line = text_line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{number}"
        match = LINE.match(line)
        if not match:
            problems.append(Problem(f"expected 'host slots=N', got {line[:60]!r}", where=where))
            continue
        host, slots = match["host"], match["slots"]
        if not (slots.isascii() and slots.isdigit()) or int(slots) < 1:  # "²".isdigit() is True
            problems.append(Problem(f"slots must be a positive integer, got {slots!r}", where=where))
            continue
        if host in seen:
            problems.append(Problem(f"duplicate host {host!r} (first on line {seen[host]})", where=where))
            continue
        seen[host] = number
        hosts.append(Host(host, int(slots), number))
    if not hosts and not problems:
        problems.append(Problem("no hosts in hostfile", where=str(path)))
    if problems:
        raise UserError(problems)
    return hosts


def lines_of(text: str) -> list[str]:
    """Lines as DeepSpeed's launcher reads the hostfile (text mode: \\n, \\r\\n, \\r), and as editors number
    them: str.splitlines would also break at form feeds, U+2028 and other separators."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def check_hosts_fit_layout(path: str | Path, hosts: list[Host], tp: int, cp: int) -> None:
    """TP and CP groups must stay inside one host: tp x cp divides every host's slots."""
    group = tp * cp
    problems = [Problem(f"host {h.name!r} has {h.slots} slots, not a multiple of tp({tp}) x cp({cp}) = {group}: "
                        "a TP/CP group would span hosts", where=f"{path}:{h.line}") for h in hosts if h.slots % group]
    if problems:
        raise UserError(problems)
