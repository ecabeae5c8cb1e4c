"""`python -m services.simulator`: serve the simulator until SIGTERM or SIGINT.

Environment: SIMULATOR_ADDR (host:port, default 127.0.0.1:8100), SIM_FAL_KEY, SIM_OPENAI_KEY,
SIM_LATENCY, SIM_CHAT_LATENCY, SIM_SEED, SIM_PUBLIC_URL, and SIM_CONFIG (a JSON object of any
config fields, overlaid by the single variables).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import uvloop

from common.collector import settle_collector
from services.simulator.app import run_simulator
from services.simulator.config import ConfigError, SimulatorConfig, config_from_env, parse_addr

logger = logging.getLogger("services.simulator")

DEFAULT_ADDR = "127.0.0.1:8100"


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with run_simulator(config, host=host, port=port) as sim:
        # A full collection pausing the simulator delays the completions and webhooks it
        # stands in for fal with (55 ms at the end of the first round of the utilisation
        # bench, every webhook of that round late by it): the services' tuning applies.
        settle_collector()
        # Keys are SecretStr: only whether they are set is logged.
        logger.info(
            "simulator listening on %s (fal auth %s, openai auth %s, latency %ss, seed %s)",
            sim.url,
            "on" if config.fal_key else "off",
            "on" if config.openai_key else "off",
            config.latency,
            config.seed,
        )
        await stop.wait()
        logger.info("simulator stopping")


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        host, port = parse_addr(os.environ.get("SIMULATOR_ADDR", DEFAULT_ADDR))
        config = config_from_env(os.environ)
    except ConfigError as exc:
        raise SystemExit(f"simulator: bad configuration: {exc}") from None
    uvloop.run(serve(config, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
