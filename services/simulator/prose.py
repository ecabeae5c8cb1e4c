"""Plausible screenplay-ish strings, chosen by property name and seeded by the request.

Generic on purpose: the words come from the last user message (its topic) and small
vocabularies; the property name only picks the *kind* of string (title, name, sentence,
place, scene heading, ...), so any story-like schema reads sensibly.
"""

from __future__ import annotations

import random
import re

FIRST_NAMES = (
    "Ada", "Mira", "Jonah", "Elena", "Theo", "Priya", "Marcus", "Ines", "Kofi", "Hana",
    "Leo", "Sofia", "Ravi", "Clara", "Tomas", "Yuki",
)  # fmt: skip
LAST_NAMES = (
    "Vance", "Okafor", "Lindqvist", "Moreau", "Takeda", "Alvarez", "Brennan", "Castillo",
    "Novak", "Reyes", "Whitlock", "Sato",
)  # fmt: skip
PLACES = (
    "laboratory", "rooftop garden", "abandoned subway station", "lighthouse", "train platform",
    "observatory", "harbor market", "hospital corridor", "desert highway", "old library",
)  # fmt: skip
TIMES_OF_DAY = ("DAY", "NIGHT", "DAWN", "DUSK", "MORNING", "EVENING")
MOODS = ("tense", "hopeful", "eerie", "bittersweet", "urgent", "quiet", "triumphant")
FALLBACK_TOPIC = ("signal", "memory", "storm", "promise", "machine", "secret")
_STOPWORDS = """
    a an the and or but of to in on at for with about from into over under by as is are was
    were be been being it its this that these those write create make generate give me my we our
    you your please story script screenplay scene scenes segment segments set sets short long
    video about should would could will can which who whom whose what when where why how than
    then there their them they he she his her him i not no yes all any some each every json
    return using use based plan movie film idea"""
STOPWORDS = frozenset(_STOPWORDS.split())

_SENTENCES = (
    "{name} realizes the {topic} was never what it seemed.",
    "In the {place}, {name} finally confronts the truth about the {topic}.",
    "{name} and {other} race against time as the {topic} begins to unravel.",
    "A {mood} silence falls as {name} studies the {topic}.",
    "{name} makes a choice that will change the {topic} forever.",
    "Everything {name} believed about the {topic} shatters in a single moment.",
)
_LINES = (
    "We don't have much time. The {topic} is changing.",
    "If we go back now, we lose everything.",
    "You knew about the {topic} all along, didn't you?",
    "Trust me. I've seen how this ends.",
    "There has to be another way.",
)

_TITLE = frozenset({"title", "headline"})
_NAME = frozenset({"name", "character", "speaker", "protagonist", "antagonist", "author"})
_LINE = frozenset({"line", "dialogue", "quote", "speech"})
_SENTENCE = frozenset(
    {
        "logline", "description", "summary", "synopsis", "action", "narration", "text",
        "content", "prompt", "body", "plot", "outline", "beat", "premise", "caption",
        "motivation", "backstory", "arc", "goal", "conflict", "note", "notes",
    }
)  # fmt: skip
_PLACE = frozenset({"location", "setting", "place", "where"})
_HEADING = frozenset({"scene_heading", "slugline", "heading"})
_MOOD = frozenset({"mood", "tone", "emotion", "atmosphere"})


def topic_words(text: str) -> list[str]:
    """Content words of a prompt's first line (where prompts name their subject), in order:
    what titles and sentences are built from."""
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    words = re.findall(r"[A-Za-z][A-Za-z'-]+", first_line)
    return [w.lower() for w in words if len(w) > 2 and w.lower() not in STOPWORDS]


def name_tokens(name: str) -> list[str]:
    """Lower-case words of a snake_case or camelCase identifier."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
    return [t for t in re.split(r"[^a-z0-9]+", snake) if t]


class Prose:
    """Strings for one completion: deterministic given its RNG and prompt."""

    def __init__(self, rng: random.Random, prompt: str) -> None:
        self._rng = rng
        self._topic = topic_words(prompt) or list(FALLBACK_TOPIC)

    def for_property(self, name: str) -> str:
        """A string suited to a property called `name` (snake_case or camelCase)."""
        tokens = name_tokens(name)
        joined = "_".join(tokens)
        last = tokens[-1] if tokens else ""
        if joined in _HEADING or (last == "heading" and "scene" in tokens):
            return self.scene_heading()
        if joined.endswith("time_of_day"):
            return self._rng.choice(TIMES_OF_DAY)
        if last in _TITLE:
            return self.title()
        if last in _NAME or joined.endswith("character_name"):
            return self.person()
        if last in _LINE:
            return self._fill(self._rng.choice(_LINES))
        if last in _SENTENCE:
            return self.sentence()
        if last in _PLACE:
            return self.place()
        if last in _MOOD:
            return self._rng.choice(MOODS)
        return self.phrase()

    def title(self) -> str:
        """'The' plus a run of up to three consecutive topic words, title-cased."""
        return "The " + " ".join(w.capitalize() for w in self._topic_run(3).split())

    def person(self) -> str:
        return f"{self._rng.choice(FIRST_NAMES)} {self._rng.choice(LAST_NAMES)}"

    def place(self) -> str:
        return f"the {self._rng.choice(PLACES)}"

    def scene_heading(self) -> str:
        inside = self._rng.choice(("INT.", "EXT."))
        return f"{inside} {self._rng.choice(PLACES).upper()} - {self._rng.choice(TIMES_OF_DAY)}"

    def sentence(self) -> str:
        return self._fill(self._rng.choice(_SENTENCES))

    def paragraph(self, sentences: int = 3) -> str:
        return " ".join(self.sentence() for _ in range(sentences))

    def phrase(self) -> str:
        words = [self._rng.choice(self._topic) for _ in range(self._rng.randint(2, 3))]
        return f"{self._rng.choice(MOODS)} {' '.join(words)}"

    def word(self) -> str:
        return self._rng.choice(self._topic)

    def _topic_run(self, size: int | None = None) -> str:
        """Consecutive topic words (1-3 unless `size`), so phrases keep the prompt's word order."""
        size = min(size or self._rng.randint(1, 3), len(self._topic))
        start = self._rng.randrange(len(self._topic) - size + 1)
        return " ".join(self._topic[start : start + size])

    def _fill(self, template: str) -> str:
        return template.format(
            name=self._rng.choice(FIRST_NAMES),
            other=self._rng.choice(FIRST_NAMES),
            topic=self._topic_run(),
            place=self._rng.choice(PLACES),
            mood=self._rng.choice(MOODS),
        )
