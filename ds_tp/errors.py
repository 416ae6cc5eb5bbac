"""The errors a user sees.

Every mistake in user input (YAML, dataset rows, hostfiles, flags) is raised as a UserError where
the fact is known and printed in one place (the CLI) as one line per problem, exit code 2.
"""
from __future__ import annotations

from dataclasses import dataclass

EXIT_USER_ERROR = 2


@dataclass(frozen=True)
class Problem:
    """One problem in user input: where it is, what is wrong, and what would be valid."""

    message: str
    where: str = ""  # "file:line:col", "file: row 3", "--flag", ... ; empty when nowhere in particular
    key: str = ""  # dotted key path in the config, e.g. "datasets[0].type"
    hint: str = ""  # what would be valid

    def __str__(self) -> str:
        head = f"{self.where}: " if self.where else ""
        key = f"{self.key}: " if self.key else ""
        hint = f" ({self.hint})" if self.hint else ""
        return one_line(f"{head}{key}{self.message}{hint}")


def one_line(text: str) -> str:
    """Control characters and line separators from user input (a YAML key "\\n") shown escaped."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)


class UserError(Exception):
    """One or more problems in user input. str() gives one line per problem."""

    def __init__(self, problems: "list[Problem] | Problem | str", *, where: str = ""):
        if isinstance(problems, str):
            problems = [Problem(problems, where=where)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Finding:
    """A problem found at a config key path; the config loader attaches file:line:col from the YAML
    marks, so code that checks values (rules, translators) never deals with files."""

    path: tuple
    message: str
    hint: str = ""
    level: str = "error"  # error | warning | notice
