"""restem coordinator: `python -m services.coordinator [--config FILE]`."""

from __future__ import annotations

import asyncio
from pathlib import Path


async def main_async(config_path: Path | None) -> None:
    from restem.coordinator.v1 import coordinator_pb2_grpc

    from shared.configio import load_service_config
    from shared.grpc_server import ServiceBinding
    from shared.service import env_prefix, open_service, run_service

    from . import metrics
    from .config import CoordinatorConfig
    from .events import Orchestrator
    from .grpc_api import RunApi
    from .reconcile import reconcile_all

    cfg = load_service_config(CoordinatorConfig, config_path, env_prefix=env_prefix("coordinator"))
    bus, store = await open_service("coordinator", cfg)
    orchestrator = Orchestrator(
        bus,
        store,
        sample_window=cfg.sample_jobs_per_run,
        verify_window=cfg.verify_jobs_per_run,
        sampler_slots=cfg.sampler_slots,
    )
    binding = ServiceBinding.of(coordinator_pb2_grpc, "RunService", RunApi(cfg, orchestrator))

    async def reconcile(stop: asyncio.Event) -> None:
        # Once at start: re-enter every running run (see reconcile.py); events drive them after.
        await reconcile_all(orchestrator)

    async def events(stop: asyncio.Event) -> None:
        # Many tries: an event fails only while the store is unreachable, and a dead event fails its run.
        await bus.consume_events(
            "coordinator",
            orchestrator.on_event,
            stop=stop,
            max_deliver=cfg.event_max_deliver,
            concurrency=cfg.event_concurrency,
            window=max(cfg.event_window, cfg.event_concurrency),
        )

    async def sweep(stop: asyncio.Event) -> None:
        await orchestrator.sweep_dead_letters(stop, cfg.dead_letter_sweep_s)

    async def gauges(stop: asyncio.Event) -> None:
        await metrics.watch(bus, stop, every_s=5.0)

    workers = [reconcile, events, sweep, gauges]
    await run_service("coordinator", cfg.grpc, bus, [binding], workers, store=store)


def main() -> None:
    from shared.service import entrypoint

    entrypoint("coordinator", main_async)


if __name__ == "__main__":
    main()
