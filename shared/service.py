"""The common life of a restem service process: entry point, logging, signals, bus, gRPC server, workers.

A service's `__main__` calls `entrypoint` (the `--config` flag, then its `main_async`), which loads
its config, opens the bus and the store with `open_service` and calls `run_service` with its gRPC
bindings and its worker loops (the work-queue services through `shared.worker.run_worker_service`). SIGTERM or SIGINT sets one stop event: workers stop fetching and finish the jobs in
hand, the gRPC server drains, then the NATS connection closes.

Health (grpc.health.v1) is SERVING only while NATS is connected, the artifact store answers a
probe (`StoreProbe`, every few seconds) and the service's own check passes: a load balancer or
Kubernetes stops sending work to a replica whose dependencies are down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

from shared import __version__
from shared.bus import EventBus
from shared.configio import ConfigError
from shared.grpc_server import ServiceBinding, serve
from shared.infra import GrpcConfig, MetricsConfig, NatsConfig, StoreConfig
from shared.logs import setup_logging
from shared.store import ArtifactStore, open_store
from shared.telemetry import serve_metrics

log = logging.getLogger("restem.service")

WorkerLoop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
MainAsync = Callable[[Path | None], Coroutine[Any, Any, None]]
_PROBE_KEY = "health/probe"  # never written: `exists` on it is a cheap round trip


class StoreProbe:
    """Whether the artifact store answered its last probe (a HEAD of a key) within `timeout_s`."""

    def __init__(self, store: ArtifactStore, *, every_s: float = 5.0, timeout_s: float = 10.0) -> None:
        self.store = store
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.healthy = True  # until a probe says otherwise: the store was opened a moment ago

    async def probe(self) -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.exists, _PROBE_KEY), self.timeout_s)
            ok = True
        except Exception as err:  # StoreUnavailable, timeout, auth: all mean "cannot work now"
            ok = False
            if self.healthy:
                log.warning("store %s unreachable (%s): health NOT_SERVING", self.store.describe(), err)
        if ok and not self.healthy:
            log.info("store %s reachable again", self.store.describe())
        self.healthy = ok
        return ok

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.probe()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.every_s)


async def run_service(
    name: str,
    grpc_config: GrpcConfig,
    bus: EventBus,
    bindings: Sequence[ServiceBinding],
    workers: Sequence[WorkerLoop],
    *,
    healthy: Callable[[], bool] | None = None,
    store: ArtifactStore | None = None,
) -> None:
    """Serve and work until SIGTERM/SIGINT; health also follows `store` when one is given."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    probe = StoreProbe(store) if store is not None else None

    def is_healthy() -> bool:
        return bus.connected and (probe is None or probe.healthy) and (healthy() if healthy else True)

    tasks = [asyncio.create_task(serve(bindings, grpc_config, healthy=is_healthy, stop=stop), name="grpc")]
    if probe is not None:
        tasks.append(asyncio.create_task(probe.run(stop), name="store-probe"))
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


class ServiceConfig(Protocol):
    """What every service config has (read-only here: each service's pydantic model)."""

    @property
    def grpc(self) -> GrpcConfig: ...
    @property
    def nats(self) -> NatsConfig: ...
    @property
    def store(self) -> StoreConfig: ...
    @property
    def log_level(self) -> str: ...
    @property
    def log_format(self) -> str: ...
    @property
    def metrics(self) -> MetricsConfig: ...


def env_prefix(name: str) -> str:
    """The environment prefix of a service's settings: `RESTEM_TRAINER__DEVICE` sets trainer.device."""
    return f"RESTEM_{name.upper()}"


async def open_service(name: str, cfg: ServiceConfig) -> tuple[EventBus, ArtifactStore]:
    """Logging, the metrics endpoint, the NATS connection (with the streams every service expects) and the artifact store."""
    setup_logging(name, cfg.log_level, cfg.log_format)
    serve_metrics(cfg.metrics, name, __version__)
    bus = await EventBus.connect(cfg.nats, name=name)
    await bus.ensure_topology()
    return bus, open_store(cfg.store)


def entrypoint(name: str, main_async: MainAsync) -> None:
    """`python -m services.<name> [--config FILE]`: parse the flag, then run `main_async` until stopped.

    The service's modules are imported by `main_async`, so `--help` answers without loading torch.
    """
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}", description=f"restem {name} service")
    parser.add_argument(
        "--config", type=Path, help=f"YAML config file (env {env_prefix(name)}__* overrides it)"
    )
    args = parser.parse_args()
    try:
        asyncio.run(main_async(args.config))
    except ConfigError as exc:  # before logging is set up: the message says which field to fix
        print(f"restem {name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception:
        # Through logging, so a crash is one line in the service's log format (JSON on a cluster).
        log.critical("%s stopped on an error", name, exc_info=True)
        raise SystemExit(1) from None
