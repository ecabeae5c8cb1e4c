"""schema_fill and prose: valid, deterministic instances for the schema features we support."""

from __future__ import annotations

import random
import uuid
from datetime import datetime
from typing import Any

import pytest

from services.simulator.prose import Prose, topic_words
from services.simulator.schema_fill import SchemaError, SchemaFiller


def fill(schema: dict[str, Any], prompt: str = "a heist on a frozen moon", seed: int = 1) -> Any:
    rng = random.Random(seed)
    return SchemaFiller(schema, rng, Prose(rng, prompt)).fill()


def test_same_seed_same_instance() -> None:
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "n": {"type": "integer"}},
    }

    assert fill(schema, seed=3) == fill(schema, seed=3)
    assert fill(schema, seed=3) != fill(schema, seed=4)


def test_object_has_exactly_its_properties() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "boolean"}, "c": {"type": "null"}},
        "required": ["a", "b", "c"],
        "additionalProperties": False,
    }

    value = fill(schema)

    assert set(value) == {"a", "b", "c"}
    assert isinstance(value["a"], str)
    assert isinstance(value["b"], bool)
    assert value["c"] is None


def test_array_sizes() -> None:
    def items(**bounds: int) -> list[Any]:
        value: list[Any] = fill({"type": "array", "items": {"type": "integer"}, **bounds})
        return value

    assert len(items()) == 3
    assert len(items(minItems=5)) == 5
    assert len(items(minItems=5, maxItems=8)) == 5
    assert len(items(maxItems=2)) == 2
    assert items(minItems=0) == []


def test_enum_const_and_unique_items() -> None:
    schema = {
        "type": "object",
        "properties": {
            "mood": {"enum": ["tense", "calm", None]},
            "kind": {"const": "scene"},
            "tags": {
                "type": "array",
                "items": {"enum": ["a", "b", "c"]},
                "minItems": 3,
                "uniqueItems": True,
            },
        },
    }

    value = fill(schema)

    assert value["mood"] in {"tense", "calm"}
    assert value["kind"] == "scene"
    assert sorted(value["tags"]) == ["a", "b", "c"]


def test_numbers_respect_bounds_and_multiples() -> None:
    schema = {
        "type": "object",
        "properties": {
            "small": {"type": "integer", "minimum": 3, "maximum": 4},
            "even": {"type": "integer", "minimum": 1, "maximum": 9, "multipleOf": 2},
            "open": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 2},
            "ratio": {"type": "number", "minimum": 0.5, "maximum": 0.75},
            "above": {"type": "number", "exclusiveMinimum": 100},
        },
    }

    for seed in range(20):
        value = fill(schema, seed=seed)
        assert value["small"] in {3, 4}
        assert value["even"] in {2, 4, 6, 8}
        assert value["open"] == 1
        assert 0.5 <= value["ratio"] <= 0.75
        assert value["above"] > 100


def test_nullable_forms_take_the_value_branch() -> None:
    schema = {
        "type": "object",
        "properties": {
            "listed": {"type": ["string", "null"]},
            "any_of": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
        },
    }

    value = fill(schema)

    assert isinstance(value["listed"], str)
    assert isinstance(value["any_of"], int)


def test_refs_into_defs_and_definitions_and_all_of() -> None:
    schema = {
        "type": "object",
        "properties": {
            "hero": {"$ref": "#/$defs/Person"},
            "villain": {"$ref": "#/definitions/Person"},
            "both": {
                "allOf": [{"$ref": "#/$defs/Person"}, {"properties": {"age": {"type": "integer"}}}]
            },
        },
        "$defs": {"Person": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "definitions": {"Person": {"type": "object", "properties": {"name": {"type": "string"}}}},
    }

    value = fill(schema)

    assert set(value["hero"]) == {"name"}
    assert set(value["villain"]) == {"name"}
    assert set(value["both"]) == {"name", "age"}


def test_recursive_schema_terminates() -> None:
    schema = {
        "$ref": "#/$defs/Node",
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
            }
        },
    }

    value = fill(schema)

    assert len(value["children"]) == 3
    assert all(child["children"] == [] and child["parent"] is None for child in value["children"])


def test_unsatisfiable_schemas_raise() -> None:
    with pytest.raises(SchemaError):
        fill({"$ref": "#/$defs/missing"})
    with pytest.raises(SchemaError):
        fill({"$ref": "https://example.com/schema.json"})
    with pytest.raises(SchemaError):
        fill({"type": "integer", "minimum": 5, "maximum": 4})
    endless = {
        "$ref": "#/$defs/A",
        "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}},
    }
    with pytest.raises(SchemaError):
        fill(endless)


def test_string_formats_and_lengths() -> None:
    schema = {
        "type": "object",
        "properties": {
            "at": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "short": {"type": "string", "maxLength": 5},
            "long": {"type": "string", "minLength": 300},
        },
    }

    value = fill(schema)

    datetime.fromisoformat(value["at"])
    uuid.UUID(value["id"])
    assert len(value["short"]) <= 5
    assert len(value["long"]) >= 300


def test_strings_follow_property_names() -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "characterName": {"type": "string"},
            "scene_heading": {"type": "string"},
            "time_of_day": {"type": "string"},
            "logline": {"type": "string"},
            "location": {"type": "string"},
            "shots": {
                "type": "array",
                "items": {"type": "object", "properties": {"shot_number": {"type": "integer"}}},
            },
        },
    }

    value = fill(schema, prompt="Write a story about a time travel paradox")

    assert value["title"] == "The Time Travel Paradox"
    first, last = value["characterName"].split(" ")
    assert first.istitle() and last.istitle()
    assert value["scene_heading"].split(" ")[0] in {"INT.", "EXT."}
    assert value["scene_heading"].isupper()
    assert value["time_of_day"] in {"DAY", "NIGHT", "DAWN", "DUSK", "MORNING", "EVENING"}
    assert value["logline"].endswith(".")
    assert value["location"].startswith("the ")
    assert [shot["shot_number"] for shot in value["shots"]] == [1, 2, 3]


def test_topic_words_drop_filler() -> None:
    assert topic_words("Please write a short story about a Lighthouse keeper!") == [
        "lighthouse",
        "keeper",
    ]
