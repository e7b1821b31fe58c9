"""The common life of a restem service process: logging, signals, bus, gRPC server, workers.

A service's `__main__` parses its config and calls `run_service` with its gRPC bindings and its
worker loops. SIGTERM or SIGINT sets one stop event: workers stop fetching and finish the jobs in
hand, the gRPC server drains, then the NATS connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from shared.bus import EventBus
from shared.grpc_server import ServiceBinding, serve
from shared.infra import GrpcConfig

log = logging.getLogger("restem.service")

WorkerLoop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


async def run_service(
    name: str,
    grpc_config: GrpcConfig,
    bus: EventBus,
    bindings: Sequence[ServiceBinding],
    workers: Sequence[WorkerLoop],
    *,
    healthy: Callable[[], bool] | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def is_healthy() -> bool:
        return bus.connected and (healthy() if healthy else True)

    tasks = [asyncio.create_task(serve(bindings, grpc_config, healthy=is_healthy, stop=stop), name="grpc")]
    tasks += [asyncio.create_task(w(stop), name=f"worker-{i}") for i, w in enumerate(workers)]
    log.info("%s started", name)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                stop.set()
                raise t.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bus.close()
        log.info("%s stopped", name)
