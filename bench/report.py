"""The printed table and the JSON file of a run."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.config import CORES, RunOptions
from bench.figures import Figure, ScenarioResult

COLUMNS = (("scenario", 12), ("figure", 40), ("value", 16), ("target", 9), ("result", 7))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# Load average when the module was imported (the run's start): other work on the machine.
LOAD_AT_START = os.getloadavg()


def machine_facts(options: RunOptions) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": CORES,
        "cpu": _cpu_model(),
        "load_average_at_start": LOAD_AT_START,
        "load_average_at_end": os.getloadavg(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "database": options.database,
        "smoke": options.smoke,
        "pinned_to_core": options.pin,
    }


def _row(cells: list[str], note: str = "") -> str:
    fixed = "  ".join(
        cell.ljust(width)[:width] for cell, (_, width) in zip(cells, COLUMNS, strict=True)
    )
    return f"{fixed}  {note}".rstrip()


def _figure_row(scenario: str, figure: Figure, judge: bool) -> str:
    target = str(figure.target) if figure.target else ""
    cells = [scenario, figure.name, figure.shown(), target, figure.verdict(judge)]
    return _row(cells, figure.note)


def render_table(results: list[ScenarioResult], options: RunOptions) -> str:
    """One fixed-width table of every figure, then the footer."""
    judge = not options.smoke
    header = _row([name for name, _ in COLUMNS], "note")
    lines = [header, "-" * len(header)]
    if options.pin is not None:
        lines[:0] = [
            f"PINNED (--pin): the benchmark and every process it started ran on core {options.pin}"
            " only (a stand-in for a slow day); RabbitMQ is not ours to pin and used any core."
        ]
    for result in results:
        if result.error is not None:
            first_line = (result.error.splitlines() or [""])[0]
            lines.append(_row([result.name, "ERROR", "", "", "FAILED"], first_line[:300]))
        lines.extend(_figure_row(result.name, f, judge) for f in result.figures)
    facts = machine_facts(options)
    load_start, load_end = facts["load_average_at_start"][0], facts["load_average_at_end"][0]
    lines += [
        "-" * len(header),
        f"{facts['date']}  {facts['cores']} cores ({facts['cpu']}), load {load_start:.2f} at start"
        f" / {load_end:.2f} at end,"
        f" Python {facts['python']}, {options.database}, RabbitMQ on localhost",
        "Every process (gateway, video worker, simulator, Celery, RabbitMQ, this client) shares"
        " these cores;",
        "the simulator stands in for fal on the same machine. Absolute numbers depend on the"
        " machine: the ratios are what count.",
    ]
    if options.smoke:
        lines.append("Smoke run: small sizes, targets not judged.")
    return "\n".join(lines)


def missed(results: list[ScenarioResult]) -> list[str]:
    """Names of judged figures whose target was missed."""
    return [
        f"{r.name}: {f.name}"
        for r in results
        for f in r.figures
        if f.verdict(judge=True) == "MISSED"
    ]


def write_json(path: Path, results: list[ScenarioResult], options: RunOptions) -> None:
    document = {
        "machine": machine_facts(options),
        "options": {
            "smoke": options.smoke,
            "scenarios": list(options.scenarios),
            "database": options.database,
            "log_level": options.log_level,
            "pin": options.pin,
        },
        "sizes": asdict(options.sizes),
        "scenarios": {
            r.name: {
                "elapsed_seconds": r.elapsed,
                "error": r.error,
                "figures": [f.as_json() for f in r.figures],
                "raw": r.raw,
            }
            for r in results
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
