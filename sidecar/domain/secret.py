"""A wrapper that keeps credentials out of reprs, logs and tracebacks."""

from typing import Final


class Secret:
    """A credential value that never prints itself.

    ``str()``, ``repr()`` and f-strings show a placeholder; only ``reveal()`` returns
    the value, which makes every place that sends it somewhere easy to find.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value: Final = value

    def reveal(self) -> str:
        """Return the credential itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
