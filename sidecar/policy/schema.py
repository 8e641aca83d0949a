"""Checking policy data against the schema in ``proto/ai_sidecar/policy/v1/policy.proto``.

The walker follows the protobuf descriptors, so the .proto file stays the one
definition of the policy format: field names, types, nesting, and the ``rules``
option on each field (required, bounds, patterns, allowed values). It reports every
problem with its field path instead of stopping at the first.
"""

import difflib
import re
from collections.abc import Iterator, Mapping
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from sidecar._proto.ai_sidecar.policy.v1 import policy_pb2
from sidecar.policy.problems import Problem
from sidecar.policy.yaml_source import FieldPath, YamlDocument, format_path

_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
    }
)
_UNSIGNED_TYPES = frozenset({FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64})
_FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})


def check_against_schema(document: YamlDocument) -> list[Problem]:
    """Every way ``document`` departs from the Policy message and its field rules."""
    walker = _SchemaWalker(document)
    root = cast(Descriptor, policy_pb2.Policy.DESCRIPTOR)
    return list(walker.message(document.data, root, ()))


class _SchemaWalker:
    def __init__(self, document: YamlDocument) -> None:
        self._document = document

    def problem(self, path: FieldPath, message: str) -> Problem:
        return Problem(format_path(path), message, self._document.line_of(path))

    def message(self, data: Any, descriptor: Descriptor, path: FieldPath) -> Iterator[Problem]:
        if not isinstance(data, Mapping):
            yield self.problem(path, f"expected a mapping, got {_describe(data)}")
            return
        fields = descriptor.fields_by_name
        for key, value in data.items():
            field = fields.get(key) if isinstance(key, str) else None
            if field is None:
                yield self.problem((*path, str(key)), _unknown_field_message(key, fields))
            else:
                yield from self.field(value, field, (*path, key))
        for field in descriptor.fields:
            if _rules(field).required and field.name not in data:
                yield self.problem((*path, field.name), "required field is missing")

    def field(self, value: Any, field: FieldDescriptor, path: FieldPath) -> Iterator[Problem]:
        rules = _rules(field)
        if _is_map(field):
            yield from self.map_field(value, field, path)
        elif field.is_repeated:
            yield from self.list_field(value, field, path)
        else:
            yield from self.single(value, field, path)
        if rules.required and _is_empty(value):
            yield self.problem(path, "must not be empty")

    def map_field(self, value: Any, field: FieldDescriptor, path: FieldPath) -> Iterator[Problem]:
        if not isinstance(value, Mapping):
            yield self.problem(path, f"expected a mapping of names, got {_describe(value)}")
            return
        rules = _rules(field)
        value_field = _message_type(field).fields_by_name["value"]
        for key, item in value.items():
            item_path = (*path, str(key))
            if not isinstance(key, str):
                yield self.problem(item_path, f"name must be a string, got {_describe(key)}")
                continue
            if rules.pattern and not re.fullmatch(rules.pattern, key):
                yield self.problem(item_path, f"invalid name '{key}': use {rules.pattern_help}")
            yield from self.single(item, value_field, item_path)

    def list_field(self, value: Any, field: FieldDescriptor, path: FieldPath) -> Iterator[Problem]:
        if not isinstance(value, list):
            yield self.problem(path, f"expected a list, got {_describe(value)}")
            return
        for position, item in enumerate(value):
            yield from self.single(item, field, (*path, position))

    def single(self, value: Any, field: FieldDescriptor, path: FieldPath) -> Iterator[Problem]:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            yield from self.message(value, _message_type(field), path)
        elif field.type == FieldDescriptor.TYPE_STRING:
            yield from self.string(value, _rules(field), path)
        elif field.type == FieldDescriptor.TYPE_BOOL:
            if not isinstance(value, bool):
                yield self.problem(path, f"expected true or false, got {_describe(value)}")
        else:
            yield from self.number(value, field, path)

    def string(
        self, value: Any, rules: policy_pb2.FieldRules, path: FieldPath
    ) -> Iterator[Problem]:
        if not isinstance(value, str):
            yield self.problem(path, f"expected a string, got {_describe(value)}")
            return
        if rules.one_of and value not in rules.one_of:
            allowed = ", ".join(rules.one_of)
            yield self.problem(path, f"'{value}' is not one of: {allowed}")
        if rules.pattern and not re.fullmatch(rules.pattern, value):
            yield self.problem(path, f"invalid value '{value}': use {rules.pattern_help}")

    def number(self, value: Any, field: FieldDescriptor, path: FieldPath) -> Iterator[Problem]:
        if field.type in _INTEGER_TYPES:
            if isinstance(value, bool) or not isinstance(value, int):
                yield self.problem(path, f"expected a whole number, got {_describe(value)}")
                return
            if field.type in _UNSIGNED_TYPES and value < 0:
                yield self.problem(path, f"must not be negative, got {value}")
                return
        elif field.type in _FLOAT_TYPES and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            yield self.problem(path, f"expected a number, got {_describe(value)}")
            return
        rules = _rules(field)
        if rules.HasField("min") and value < rules.min:
            yield self.problem(path, f"must be at least {_plain(rules.min)}, got {value}")
        if rules.HasField("max") and value > rules.max:
            yield self.problem(path, f"must be at most {_plain(rules.max)}, got {value}")


def _rules(field: FieldDescriptor) -> policy_pb2.FieldRules:
    extensions: Any = field.GetOptions().Extensions
    return cast(policy_pb2.FieldRules, extensions[policy_pb2.rules])


def _message_type(field: FieldDescriptor) -> Descriptor:
    message_type = field.message_type
    assert message_type is not None, f"{field.full_name} is not a message field"
    return message_type


def _is_map(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return message_type is not None and message_type.GetOptions().map_entry


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


def _unknown_field_message(key: object, fields: Mapping[str, FieldDescriptor]) -> str:
    suggestions = difflib.get_close_matches(str(key), list(fields), n=1)
    hint = f" (did you mean '{suggestions[0]}'?)" if suggestions else ""
    known = ", ".join(sorted(fields))
    return f"unknown field '{key}'{hint}; known fields: {known}"


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string '{value}'"
    return f"the {type(value).__name__} {value}"


def _plain(number: float) -> str:
    return str(int(number)) if number == int(number) else str(number)
