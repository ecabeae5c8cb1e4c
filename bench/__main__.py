"""`python -m bench [--smoke] [--only SCENARIO ...] [--json PATH] [--database sqlite|postgres]
[--pin [CORE]]`.

Runs the scenarios in order, each on fresh processes, prints progress to stderr, then one table
to stdout, and writes every raw number to the JSON file (default bench/results/latest.json).

Exit status: 0 when every scenario ran and every job completed (missed targets are reported, not
failures, unless --strict); 1 when a scenario failed (error, job stalled or not COMPLETED); 3
with --strict when a target was missed; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from bench.config import (
    DEFAULT_AMQP_URL,
    DEFAULT_JSON,
    DEFAULT_POSTGRES_URL,
    SCENARIOS,
    RunOptions,
    Sizes,
)
from bench.console import say
from bench.figures import ScenarioResult
from bench.procs import Pinning, kill_survivors, pin_benchmark
from bench.report import missed, render_table, write_json
from bench.scenarios import (
    delays,
    fairness,
    faults,
    overhead,
    progress,
    scale,
    spend,
    storm,
    utilisation,
)
from bench.stack import RunContext

Runner = Callable[[RunContext, Sizes, ScenarioResult], Awaitable[None]]
RUNNERS: dict[str, Runner] = {
    "overhead": overhead.run,
    "utilisation": utilisation.run,
    "faults": faults.run,
    "progress": progress.run,
    "scale": scale.run,
    "fairness": fairness.run,
    "storm": storm.run,
    "spend": spend.run,
    "delays": delays.run,
}


def parse_args(argv: list[str]) -> RunOptions:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, targets not judged")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        metavar="SCENARIO",
        help=f"run only these scenarios ({', '.join(SCENARIOS)})",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--log-level", default="WARNING", help="LOG_LEVEL of the services")
    parser.add_argument("--keep-logs", action="store_true", help="keep the run directory")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    parser.add_argument(
        "--pin",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="CORE",
        help="run the benchmark and every process it starts on one core (default 0), as"
        " `taskset -c CORE`: a stand-in for a slow day (RabbitMQ is not pinned)",
    )
    args = parser.parse_args(argv)
    if args.pin is not None and args.pin not in os.sched_getaffinity(0):
        parser.error(f"--pin {args.pin}: not one of the cores this process may use")
    chosen = set(args.only or SCENARIOS)
    return RunOptions(
        smoke=args.smoke,
        scenarios=tuple(name for name in SCENARIOS if name in chosen),
        json_path=args.json,
        database=args.database,
        amqp_url=args.amqp_url,
        postgres_url=args.postgres_url,
        log_level=args.log_level,
        keep_logs=args.keep_logs,
        strict=args.strict,
        pin=args.pin,
    )


async def run_all(options: RunOptions, workdir: Path, results: list[ScenarioResult]) -> None:
    """Run the chosen scenarios in order; a failed one is recorded and the next one runs."""
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    ctx = RunContext(options, workdir)
    for name in options.scenarios:
        result = ScenarioResult(name)
        results.append(result)
        began = time.perf_counter()
        say(f"== {name}")
        try:
            await RUNNERS[name](ctx, options.sizes, result)
        except Exception as exc:  # reported in the table; the next scenario still runs
            result.error = f"{type(exc).__name__}: {exc}"
            say(f"{name} FAILED: {result.error}")
        except asyncio.CancelledError:
            result.error = "interrupted"
            raise
        finally:
            result.elapsed = time.perf_counter() - began
        say(f"== {name} done in {result.elapsed:.1f}s")


def main(argv: list[str]) -> int:
    options = parse_args(argv)
    if options.pin is not None:
        # Before any child or thread exists: everything started from here on inherits it.
        pin_benchmark({options.pin})
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    results: list[ScenarioResult] = []
    interrupted = False
    say(
        f"bench: {'smoke' if options.smoke else 'full'} run of {', '.join(options.scenarios)};"
        f"{'' if options.pin is None else f' pinned to core {options.pin};'} logs in {workdir}"
    )
    try:
        uvloop.run(run_all(options, workdir, results))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        say("interrupted")
    finally:
        if survivors := kill_survivors():
            say(f"killed leftover processes: {', '.join(survivors)}")
    if Pinning.repinned:
        say(f"warning: found unpinned and pinned them: {', '.join(Pinning.repinned)}")
    failed = [r for r in results if r.error is not None]
    print(render_table(results, options))
    write_json(options.json_path, results, options)
    say(f"results written to {options.json_path}")
    if failed or interrupted or options.keep_logs:
        say(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    if failed:
        return 1
    if options.strict and not options.smoke and missed(results):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
