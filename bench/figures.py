"""What a scenario hands back: measured figures (with an optional target) and raw numbers."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Op = Literal[">=", "<=", ">", "=="]
_OPS: dict[Op, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "==": lambda a, b: abs(a - b) < 1e-9,
}


@dataclass(frozen=True)
class Target:
    """`value <op> bound`, e.g. Target(">=", 0.95)."""

    op: Op
    bound: float
    fmt: str = ".2f"

    def met(self, value: float) -> bool:
        return _OPS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.op} {self.bound:{self.fmt}}"


@dataclass(frozen=True)
class Figure:
    """One row of the table: a measured value, how to print it, and what it should be."""

    name: str
    value: float | None
    unit: str = ""
    fmt: str = ".1f"
    target: Target | None = None
    note: str = ""

    def shown(self) -> str:
        if self.value is None:
            return "n/a"
        return f"{self.value:{self.fmt}}{(' ' + self.unit) if self.unit else ''}"

    def verdict(self, judge: bool) -> str:
        """ "met" / "MISSED" when judged against a target; "-" otherwise."""
        if self.target is None or not judge:
            return "-"
        if self.value is None:
            return "MISSED"
        return "met" if self.target.met(self.value) else "MISSED"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": str(self.target) if self.target else None,
            "met": None
            if self.target is None or self.value is None
            else self.target.met(self.value),
            "note": self.note,
        }


@dataclass
class ScenarioResult:
    """The outcome of one scenario: figures for the table, raw numbers for the JSON file."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    elapsed: float = 0.0

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure


def cpu_figure(name: str, cpu: dict[str, float], wall: float) -> Figure:
    """Information row: CPU seconds each process used while a job ran, and the wall time.

    On a machine this small, where the cores go says more than any single rate.
    """
    parts = ", ".join(f"{process} {seconds:.1f}" for process, seconds in cpu.items())
    return Figure(name, sum(cpu.values()), "cpu-s", ".1f", note=f"{parts} (wall {wall:.1f}s)")


def cpu_per_unit_figure(
    name: str, cpu: dict[str, float], units: int, wall: float, unit: str = "seg"
) -> Figure:
    """Information row: CPU milliseconds per unit of work, all the listed processes together;
    the note has each process's share (`client` is this benchmark process) and the totals."""
    parts = ", ".join(f"{process} {seconds * 1000 / units:.2f}" for process, seconds in cpu.items())
    total = sum(cpu.values())
    return Figure(
        name,
        total * 1000 / units,
        f"ms/{unit}",
        ".2f",
        note=f"ms/{unit}: {parts} ({total:.1f} cpu-s / {units} {unit}, wall {wall:.1f}s)",
    )
