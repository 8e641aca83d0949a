"""Reading policy YAML: plain data, the line of every field, and duplicate keys.

PyYAML silently keeps the last of two equal keys; a policy with a tenant or a
cluster written twice is almost always a mistake, so duplicates are reported here.
Booleans are read as YAML 1.2 reads them (only ``true`` and ``false``), so a tier
named ``no`` or ``off`` stays a name; aliases (``*anchor``) are refused, since a
policy needs none and they can make a file that never finishes loading.
"""

import re
from dataclasses import dataclass
from typing import Any

import yaml

from sidecar.policy.problems import Problem

_BOOL_TAG = "tag:yaml.org,2002:bool"


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans."""


_PolicyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PolicyLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A parsed YAML document with the 1-based line where each field path starts."""

    data: Any
    lines: dict[FieldPath, int]
    problems: tuple[Problem, ...]

    def line_of(self, path: FieldPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)


def format_path(path: FieldPath) -> str:
    """Render a field path as operators write it: ``tiers.free.routes.chat``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def read_yaml(text: str) -> YamlDocument:
    """Parse YAML text; syntax errors come back as problems, not exceptions."""
    try:
        root = yaml.compose(text, Loader=_PolicyLoader)
    except yaml.YAMLError as error:
        return YamlDocument(None, {}, (_syntax_problem(error),))
    lines: dict[FieldPath, int] = {}
    problems: list[Problem] = []
    if root is not None:
        _index(root, (), lines, problems, set())
    if problems:
        return YamlDocument(None, lines, tuple(problems))
    data = yaml.load(text, Loader=_PolicyLoader)
    return YamlDocument(data, lines, ())


def _syntax_problem(error: yaml.YAMLError) -> Problem:
    mark = getattr(error, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    reason = getattr(error, "problem", None) or str(error)
    return Problem("", f"not valid YAML: {reason}", line)


def _index(
    node: yaml.Node,
    path: FieldPath,
    lines: dict[FieldPath, int],
    problems: list[Problem],
    seen: set[int],
) -> None:
    if id(node) in seen and isinstance(node, yaml.CollectionNode):
        if -id(node) not in seen:  # report each aliased node once
            seen.add(-id(node))
            message = "YAML aliases (*name) are not supported in policy files; write it out"
            problems.append(Problem(format_path(path), message, node.start_mark.line + 1))
        return
    seen.add(id(node))
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        _index_mapping(node, path, lines, problems, seen)
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            _index(item, (*path, position), lines, problems, seen)


def _index_mapping(
    node: yaml.MappingNode,
    path: FieldPath,
    lines: dict[FieldPath, int],
    problems: list[Problem],
    seen: set[int],
) -> None:
    first_line_of_key: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        key_line = key_node.start_mark.line + 1
        if key in first_line_of_key:
            problems.append(
                Problem(
                    format_path((*path, key)),
                    f"duplicate key '{key}' (first defined on line {first_line_of_key[key]})",
                    key_line,
                )
            )
            continue
        first_line_of_key[key] = key_line
        _index(value_node, (*path, key), lines, problems, seen)
        lines[(*path, key)] = key_line
