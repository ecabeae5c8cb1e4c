"""Deterministic JSON that validates against a JSON schema (the subset structured outputs use).

Supported: object (properties, required; every listed property is produced and nothing
else), array (items, prefixItems, minItems/maxItems, uniqueItems), string (enum, const,
format, minLength/maxLength; `pattern` is not honoured), integer/number (minimum, maximum,
exclusive bounds, multipleOf), boolean, null, type lists, anyOf/oneOf (first non-null
branch), allOf (merged), and `$ref` into `#/$defs` or `#/definitions`.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from services.simulator.prose import Prose, name_tokens

Schema = Mapping[str, Any]
DEFAULT_ITEMS = 3
MAX_REF_DEPTH = 64  # $ref expansions on one path before a schema counts as infinite
_UNIQUE_ATTEMPTS = 20
_INDEX_NAMES = ("number", "index", "num", "no", "order", "position", "idx")


class SchemaError(ValueError):
    """The schema uses something this generator cannot satisfy."""


class SchemaFiller:
    """Builds one instance of `root`; all choices come from `rng`, strings from `prose`."""

    def __init__(self, root: Schema, rng: random.Random, prose: Prose) -> None:
        self._root = root
        self._rng = rng
        self._prose = prose
        self._expanding: list[str] = []  # $refs being filled on the current path
        self._recursing = 0  # > 0 inside a $ref that is already being filled

    def fill(self) -> Any:
        return self._value(self._root, name="", index=None)

    def _value(self, schema: Schema, *, name: str, index: int | None) -> Any:
        """Track $ref recursion: inside a recursive reference, take the smallest instance
        (null branch, fewest items) so self-referencing schemas terminate."""
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            return self._fill(schema, name=name, index=index)
        if len(self._expanding) >= MAX_REF_DEPTH:
            raise SchemaError("schema recursion has no finite instance")
        recursive = ref in self._expanding
        self._expanding.append(ref)
        self._recursing += recursive
        try:
            return self._fill(schema, name=name, index=index)
        finally:
            self._expanding.pop()
            self._recursing -= recursive

    def _fill(self, schema: Schema, *, name: str, index: int | None) -> Any:
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            options = [v for v in schema["enum"] if v is not None] or list(schema["enum"])
            return self._rng.choice(options)
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            return self._value(self._branch(branches), name=name, index=index)
        kind = self._type(schema)
        if kind == "object":
            return self._object(schema, index=index)
        if kind == "array":
            return self._array(schema, name=name)
        if kind == "string":
            return self._string(schema, name)
        if kind == "integer":
            return self._integer(schema, name, index)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        raise SchemaError(f"unsupported type {kind!r}")

    def _resolve(self, schema: Schema) -> Schema:
        """Follow `$ref`s (siblings override the target) and merge `allOf`."""
        seen: set[str] = set()
        while "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen:
                raise SchemaError(f"$ref cycle at {ref}")
            seen.add(ref)
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**self._pointer(ref), **siblings}
        if "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for raw_part in schema["allOf"]:
                part = self._resolve(raw_part)
                merged["properties"] = {
                    **merged.get("properties", {}),
                    **part.get("properties", {}),
                }
                merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                merged.update(
                    {k: v for k, v in part.items() if k not in ("properties", "required")}
                )
            schema = merged
        return schema

    def _pointer(self, ref: str) -> Schema:
        if not ref.startswith("#"):
            raise SchemaError(f"only local $ref is supported, got {ref!r}")
        node: Any = self._root
        for part in ref[1:].split("/")[1:]:
            key = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or key not in node:
                raise SchemaError(f"$ref {ref!r} does not resolve")
            node = node[key]
        if not isinstance(node, Mapping):
            raise SchemaError(f"$ref {ref!r} is not a schema")
        return node

    def _branch(self, branches: list[Schema]) -> Schema:
        def is_null(branch: Schema) -> bool:
            return self._resolve(branch).get("type") == "null"

        non_null = [b for b in branches if not is_null(b)]
        if self._recursing and len(non_null) < len(branches):
            return {"type": "null"}
        return non_null[0] if non_null else branches[0]

    def _type(self, schema: Schema) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            if not non_null or (self._recursing and "null" in kind):
                return "null"
            return str(non_null[0])
        if isinstance(kind, str):
            return kind
        if "properties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    def _object(self, schema: Schema, *, index: int | None) -> dict[str, Any]:
        properties: Mapping[str, Schema] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        missing = required - properties.keys()
        if missing and schema.get("additionalProperties") is False:
            raise SchemaError(f"required {sorted(missing)} are not in properties")
        return {key: self._value(sub, name=key, index=index) for key, sub in properties.items()} | {
            key: self._prose.phrase() for key in sorted(missing)
        }

    def _array(self, schema: Schema, *, name: str) -> list[Any]:
        count = schema.get("minItems", 0 if self._recursing else DEFAULT_ITEMS)
        if "maxItems" in schema:
            count = min(count, schema["maxItems"])
        prefix: list[Schema] = schema.get("prefixItems", [])
        items: Schema = schema.get("items") or {"type": "string"}
        values: list[Any] = []
        for position in range(count):
            sub = prefix[position] if position < len(prefix) else items
            value = self._value(sub, name=name, index=position + 1)
            if schema.get("uniqueItems"):
                for _ in range(_UNIQUE_ATTEMPTS):
                    if not _contains(values, value):
                        break
                    value = self._value(sub, name=name, index=position + 1)
            values.append(value)
        return values

    def _string(self, schema: Schema, name: str) -> str:
        text = self._formatted(schema.get("format")) or self._prose.for_property(name)
        low = schema.get("minLength", 0)
        while len(text) < low:
            text = f"{text} {self._prose.sentence()}"
        if "maxLength" in schema:
            text = text[: schema["maxLength"]]
        return text

    def _formatted(self, fmt: object) -> str | None:
        moment = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=self._rng.randrange(10**8))
        match fmt:
            case "date-time":
                return moment.isoformat().replace("+00:00", "Z")
            case "date":
                return moment.date().isoformat()
            case "time":
                return moment.time().isoformat() + "Z"
            case "email":
                return f"{self._prose.person().replace(' ', '.').lower()}@example.com"
            case "uri" | "url":
                return f"https://example.com/{self._prose.word()}/{self._rng.randrange(10**6)}"
            case "uuid":
                return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        return None

    def _integer(self, schema: Schema, name: str, index: int | None) -> int:
        low, high = _bounds(schema, step=1)
        low_i, high_i = math.ceil(low), math.floor(high)
        step = schema.get("multipleOf", 1)
        if not isinstance(step, int) or step < 1:
            step = 1
        first = math.ceil(low_i / step) * step
        if first > high_i:
            raise SchemaError(f"no integer fits {schema}")
        choices = (high_i - first) // step + 1
        tokens = name_tokens(name)
        if index is not None and tokens and tokens[-1] in _INDEX_NAMES:
            # Position-like fields inside array items count 1, 2, 3, ... when allowed.
            wanted = first + (index - 1) * step
            if wanted <= high_i:
                return wanted
        return first + self._rng.randrange(choices) * step

    def _number(self, schema: Schema) -> float:
        low, high = _bounds(schema, step=0.01)
        if low > high:
            raise SchemaError(f"no number fits {schema}")
        value = round(self._rng.uniform(low, high), 2)
        return min(max(value, low), high)


def _bounds(schema: Schema, *, step: float) -> tuple[float, float]:
    """[low, high] from minimum/maximum and their exclusive forms; a 1..10 range by default."""
    low: float | None = schema.get("minimum")
    high: float | None = schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = max(low if low is not None else -math.inf, schema["exclusiveMinimum"] + step)
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        high = min(high if high is not None else math.inf, schema["exclusiveMaximum"] - step)
    if low is None:
        low = 1.0 if high is None else high - 9
    if high is None:
        high = low + 9
    return low, high


def _contains(values: list[Any], value: Any) -> bool:
    key = json.dumps(value, sort_keys=True)
    return any(json.dumps(v, sort_keys=True) == key for v in values)
