"""2. The peer: the same workload as Celery tasks on the same RabbitMQ.

This module is both the Celery app the worker runs (`celery -A bench.celery_peer worker`, which
imports it and finds `app`) and the driver that measures it (`celery_rates`). The worker's app
is configured from BENCH_CELERY_* variables because Celery's command line can only import an
app by module path; the driver builds its own app with `make_app`.

Settings are the reliable ones, as the orchestrator's: late acks (`task_acks_late=True`),
publisher confirms (`broker_transport_options={"confirm_publish": True}`), persistent messages;
a prefork pool of as many processes as cores. Each task does what one segment does at the
provider — submit to the simulator's fal queue API, check the status (until COMPLETED), fetch
the result — with a plain sync httpx client, then publishes a persistent completion message to
a queue the driver consumes. The no-op variant only publishes the completion.

Rate = N / (time from just before the first `send_task` to the N-th completion received). CPU
over the same span: the Celery worker's whole process tree (the main process, every prefork
child, and children it reaped: `bench.procs.tree_cpu_seconds`), the simulator, and the driver
(this benchmark process: `send_task` in a thread and the completion consumer).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import aio_pika
import httpx
from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from bench.broker_limit import collect, delete_amqp
from bench.config import Sizes
from bench.console import best_effort
from bench.probes import consuming
from bench.procs import ChildProcess, descendants
from bench.simulator import running_simulator

if TYPE_CHECKING:
    from bench.stack import RunContext

MODEL = "fal-ai/kling-video/v1/standard/image-to-video"
ARENA_URL = "https://example.com/arena.png"
FAL_KEY = "bench-fal-key-0123456789"
SEGMENT_TASK = "bench.segment"
NOOP_TASK = "bench.noop"
HTTP_TIMEOUT = 10.0
STATUS_POLL = 0.05  # only used if a status is not COMPLETED yet (never with zero latency)


def make_app(broker_url: str, queue: str, done_queue: str, sim_url: str = "") -> Celery:
    """A Celery app on `broker_url` whose tasks go to `queue` and report to `done_queue`."""
    app = Celery("bench_peer", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        broker_transport_options={"confirm_publish": True},
        task_default_queue=queue,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_enable_remote_control=False,  # no pidbox queue per worker
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        bench_done_queue=done_queue,
        bench_sim_url=sim_url,
    )
    return app


# The worker's app (see the module docstring for why it is configured from the environment).
app = make_app(
    os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672/"),
    os.environ.get("BENCH_CELERY_QUEUE", "bench-celery"),
    os.environ.get("BENCH_CELERY_DONE", "bench-celery-done"),
    os.environ.get("BENCH_SIM_URL", ""),
)


class _Http:
    """One sync httpx client per pool process, opened after the fork and closed at its end."""

    client: httpx.Client | None = None


@worker_process_init.connect
def _open_http(**_: Any) -> None:
    _Http.client = httpx.Client(timeout=HTTP_TIMEOUT, headers={"Authorization": f"Key {FAL_KEY}"})


@worker_process_shutdown.connect
def _close_http(**_: Any) -> None:
    if _Http.client is not None:
        _Http.client.close()
        _Http.client = None


def _complete(index: int) -> None:
    """Publish the completion message (persistent, confirmed) for the driver."""
    with app.producer_or_acquire() as producer:
        producer.publish(
            {"index": index},
            exchange="",
            routing_key=app.conf.bench_done_queue,
            serializer="json",
            delivery_mode=2,
            retry=False,
        )


@app.task(name=SEGMENT_TASK)
def segment(index: int) -> None:
    """One segment at the provider: submit, status until COMPLETED, result; then complete."""
    client = _Http.client
    assert client is not None, "worker_process_init did not run"
    submitted = client.post(
        f"{app.conf.bench_sim_url}/{MODEL}",
        json={"prompt": f"segment {index}", "image_url": ARENA_URL},
    )
    submitted.raise_for_status()
    urls = submitted.json()
    while True:
        status = client.get(urls["status_url"], params={"logs": "1"})
        status.raise_for_status()
        if status.json()["status"] == "COMPLETED":
            break
        time.sleep(STATUS_POLL)
    result = client.get(urls["response_url"])
    result.raise_for_status()
    if not result.json()["video"]["url"]:
        raise RuntimeError("result without a video URL")
    _complete(index)


@app.task(name=NOOP_TASK)
def noop(index: int) -> None:
    """Nothing but the completion: Celery's own cost per task."""
    _complete(index)


def _send_all(driver: Celery, task: str, n: int, queue: str) -> None:
    """Send n tasks the ordinary way (runs in a thread: kombu is synchronous)."""
    for index in range(n):
        driver.send_task(task, args=(index,), queue=queue)


async def _cpu(worker: ChildProcess, sim: ChildProcess) -> dict[str, float | None]:
    return {
        "celery_worker_tree": await worker.tree_cpu_seconds(),
        "simulator": await sim.cpu_seconds(),
        "driver": time.process_time(),
    }


async def _measure(
    driver: Celery,
    amqp_url: str,
    task: str,
    n: int,
    queue: str,
    done: str,
    processes: tuple[ChildProcess, ChildProcess],
) -> dict[str, Any]:
    """One run of n tasks; `processes` = (Celery worker, simulator), whose CPU is measured."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=256)
        done_queue = await channel.declare_queue(done, durable=True)
        await done_queue.purge()
        cpu_before = await _cpu(*processes)
        async with asyncio.TaskGroup() as tasks:
            began = time.perf_counter()
            collector = tasks.create_task(collect(done_queue, n))
            await asyncio.to_thread(_send_all, driver, task, n, queue)
            sent = time.perf_counter()
        seconds = collector.result() - began
        cpu_after = await _cpu(*processes)
    cpu = {
        name: end - start
        for name, end in cpu_after.items()
        if end is not None and (start := cpu_before[name]) is not None
    }
    if "celery_worker_tree" not in cpu:
        raise RuntimeError("the Celery worker exited during the run")
    return {
        "tasks": n,
        "seconds": seconds,
        "send_seconds": sent - began,
        "rate": n / seconds,
        "cpu_seconds": cpu,
        "pool_processes": len(descendants(processes[0].pid)) if processes[0].pid else None,
    }


async def celery_rates(
    ctx: RunContext, sizes: Sizes, name: str = "overhead-celery"
) -> dict[str, Any]:
    """Start a simulator and a Celery worker; measure the workload and the no-op variant.
    `name`: the run's folder of logs."""
    opts = ctx.options
    n = sizes.overhead_segments
    prefix = ctx.new_prefix()
    queue, done = f"{prefix}-celery", f"{prefix}-celery-done"
    log_dir = ctx.workdir / name
    log_dir.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as exits:
        sim = await exits.enter_async_context(
            running_simulator(log_dir, "simulator", {"latency": 0}, opts.log_level)
        )
        # Celery declares a direct exchange named after the queue: removed too.
        exits.push_async_callback(
            best_effort,
            "delete the Celery queues",
            lambda: delete_amqp(opts.amqp_url, [queue, done], [queue]),
        )
        driver = make_app(opts.amqp_url, queue, done)
        exits.callback(driver.close)
        env = {
            "BENCH_CELERY_BROKER": opts.amqp_url,
            "BENCH_CELERY_QUEUE": queue,
            "BENCH_CELERY_DONE": done,
            "BENCH_SIM_URL": sim.url,
        }
        argv = [
            sys.executable, "-m", "celery", "-A", "bench.celery_peer", "worker",
            "--pool", "prefork", "--concurrency", str(sizes.celery_concurrency),
            "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--queues", queue, "--hostname", f"{prefix}@%h",
        ]  # fmt: skip
        worker = ChildProcess("celery_worker", argv, env, log_dir, consuming(opts.amqp_url, queue))
        exits.push_async_callback(worker.stop)
        await worker.start()
        processes = (worker, sim.process)
        workload = await _measure(driver, opts.amqp_url, SEGMENT_TASK, n, queue, done, processes)
        workload["simulator"] = await sim.stats()
        noop_run = await _measure(driver, opts.amqp_url, NOOP_TASK, n, queue, done, processes)
    return {
        "workload": workload,
        "noop": noop_run,
        "concurrency": sizes.celery_concurrency,
        "prefetch_multiplier": app.conf.worker_prefetch_multiplier,
    }
