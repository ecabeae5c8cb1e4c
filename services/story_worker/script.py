"""The movie-script format: JSON schemas sent to the model, prompts, and output validation.

A story is planned once (title, logline, character roster, a one-line outline per segment), then
written in sets. Every set is generated from the stored plan, so sets can run in parallel and a
set retried days later still fits: the set schema only allows the roster's names (an `enum`), so
the model cannot invent or rename a character.

Segment fields (what a film pipeline needs per shot sequence):

  scene_heading     slug line, e.g. "INT. TIME LAB - NIGHT"
  location          where it happens
  time_of_day       DAY | NIGHT | DAWN | DUSK | CONTINUOUS
  characters        who appears (names from the roster)
  action            what we see, present tense
  dialogue          [{character, parenthetical, line}] (may be empty)
  narration         voice-over ("" when none)
  camera            shot / movement notes
  duration_seconds  3..30, screen time of the segment
  visual_prompt     a prompt for a video model (feeds a video job)

Segment numbers are assigned by us from the set's range, not trusted from the model.
"""

from __future__ import annotations

from typing import Any

from common.resilience import ErrorClass, TransientError

PROVIDER = "openai"
TIMES_OF_DAY = ["DAY", "NIGHT", "DAWN", "DUSK", "CONTINUOUS"]
MIN_CHARACTERS, MAX_CHARACTERS = 2, 8

SYSTEM = (
    "You are a professional screenwriter. You write tight, visual movie scripts split into short"
    " segments that a video pipeline can shoot one by one. Answer only with JSON that follows"
    " the given schema."
)


def _strict(properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema in OpenAI's strict structured-output form."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def plan_schema(total_segments: int) -> dict[str, Any]:
    string = {"type": "string"}
    return _strict(
        {
            "title": string,
            "logline": string,
            "genre": string,
            "characters": {
                "type": "array",
                "minItems": MIN_CHARACTERS,
                "maxItems": MAX_CHARACTERS,
                "items": _strict({"name": string, "role": string, "description": string}),
            },
            "outline": {
                "type": "array",
                "minItems": total_segments,
                "maxItems": total_segments,
                "items": string,
            },
        }
    )


def set_schema(roster: list[str], count: int) -> dict[str, Any]:
    string = {"type": "string"}
    name = {"type": "string", "enum": roster}
    segment = _strict(
        {
            "scene_heading": string,
            "location": string,
            "time_of_day": {"type": "string", "enum": TIMES_OF_DAY},
            "characters": {"type": "array", "items": name},
            "action": string,
            "dialogue": {
                "type": "array",
                "items": _strict({"character": name, "parenthetical": string, "line": string}),
            },
            "narration": string,
            "camera": string,
            "duration_seconds": {"type": "integer", "minimum": 3, "maximum": 30},
            "visual_prompt": string,
        }
    )
    return _strict(
        {"segments": {"type": "array", "minItems": count, "maxItems": count, "items": segment}}
    )


# What a call likely spends, for per-minute token budgets (a rough 4 characters a token for the
# prompt, and what a segment or an outline line of the answer usually takes).
TOKENS_PER_SEGMENT = 250
TOKENS_PER_OUTLINE_LINE = 30
CHARS_PER_TOKEN = 4


def expected_tokens(prompt: str, *, segments: int = 0, outline_lines: int = 0) -> int:
    answer = segments * TOKENS_PER_SEGMENT + outline_lines * TOKENS_PER_OUTLINE_LINE
    return (len(SYSTEM) + len(prompt)) // CHARS_PER_TOKEN + answer


def plan_prompt(idea: str, total_segments: int) -> str:
    return (
        f"Plan a movie from this idea: {idea}\n"
        f"It will be written as {total_segments} segments. Give it a title, a one-sentence"
        f" logline, its genre, a roster of {MIN_CHARACTERS} to {MAX_CHARACTERS} characters with"
        f" distinct names, and an outline with exactly one line per segment"
        f" ({total_segments} lines, in story order)."
    )


def set_prompt(plan: dict[str, Any], number: int, total_sets: int, first: int, last: int) -> str:
    roster = "\n".join(
        f"- {c['name']} ({c['role']}): {c['description']}" for c in plan["characters"]
    )
    outline = "\n".join(f"{n}. {plan['outline'][n - 1]}" for n in range(first, last + 1))
    return (
        f"SET {number} OF {total_sets}: write segments {first} to {last} of the movie"
        f' "{plan["title"]}".\n'
        f"Logline: {plan['logline']}\nGenre: {plan['genre']}\n"
        f"Characters (use only these names, spelled exactly):\n{roster}\n"
        f"Outline of these segments:\n{outline}\n"
        f"Write exactly {last - first + 1} segments, in order."
    )


class InvalidOutput(TransientError):
    """The model's answer does not fit (truncated, not JSON, inconsistent): try again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, provider=PROVIDER, error_class=ErrorClass.INVALID_OUTPUT)


def check_plan(data: dict[str, Any], total_segments: int) -> dict[str, Any]:
    """The plan with names de-duplicated and trimmed; InvalidOutput if it is unusable."""
    try:
        return _check_plan(data, total_segments)
    except (AttributeError, KeyError, TypeError) as exc:  # a server that ignored the schema
        raise InvalidOutput(f"the plan does not follow the schema ({exc})") from None


def _check_plan(data: dict[str, Any], total_segments: int) -> dict[str, Any]:
    title = str(data.get("title", "")).strip()
    if not title:
        raise InvalidOutput("the plan has no title")
    characters: list[dict[str, str]] = []
    for c in data.get("characters") or []:
        name = str(c.get("name", "")).strip()
        if name and name not in {x["name"] for x in characters}:
            characters.append(
                {
                    "name": name,
                    "role": str(c.get("role", "")),
                    "description": str(c.get("description", "")),
                }
            )
    if len(characters) < MIN_CHARACTERS:
        raise InvalidOutput(f"the plan names {len(characters)} distinct characters")
    outline = [str(line) for line in data.get("outline") or []]
    if len(outline) != total_segments:
        raise InvalidOutput(f"the outline has {len(outline)} lines for {total_segments} segments")
    return {
        "title": title,
        "logline": str(data.get("logline", "")),
        "genre": str(data.get("genre", "")),
        "characters": characters,
        "outline": outline,
    }


def check_set(
    data: dict[str, Any], roster: list[str], first: int, last: int
) -> list[dict[str, Any]]:
    """The set's segments, numbered first..last; InvalidOutput if they do not fit the plan."""
    try:
        return _check_set(data, roster, first, last)
    except (AttributeError, KeyError, TypeError) as exc:  # a server that ignored the schema
        raise InvalidOutput(f"the set does not follow the schema ({exc})") from None


def _check_set(
    data: dict[str, Any], roster: list[str], first: int, last: int
) -> list[dict[str, Any]]:
    segments = data.get("segments")
    expected = last - first + 1
    if not isinstance(segments, list) or len(segments) != expected:
        got = len(segments) if isinstance(segments, list) else "no"
        raise InvalidOutput(f"expected {expected} segments, got {got}")
    allowed = set(roster)
    numbered = []
    for offset, segment in enumerate(segments):
        if not isinstance(segment, dict):
            raise InvalidOutput(f"segment {first + offset} is not an object")
        names = set(segment.get("characters") or []) | {
            d.get("character") for d in segment.get("dialogue") or []
        }
        unknown = sorted(str(n) for n in names - allowed)
        if unknown:
            raise InvalidOutput(
                f"segment {first + offset} uses characters not in the roster: {unknown}"
            )
        numbered.append({"segment_number": first + offset, **segment})
    return numbered
