"""Problems found in a policy file, and the error that carries them to the operator."""

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a policy file: where (field path, line) and what."""

    path: str
    message: str
    line: int | None = None

    def render(self, source_name: str) -> str:
        """Format as ``file:line: path: message``, the way compilers report errors."""
        location = f"{source_name}:{self.line}" if self.line is not None else source_name
        field = f" {self.path}:" if self.path else ""
        return f"{location}:{field} {self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used, with every problem found in it."""

    def __init__(self, source_name: str, problems: Sequence[Problem]) -> None:
        self.source_name = source_name
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        """All problems, one per line, each naming the file and the field."""
        count = len(self.problems)
        header = f"{self.source_name}: {count} problem{'s' if count != 1 else ''} in policy"
        return "\n".join([header, *(problem.render(self.source_name) for problem in self.problems)])
