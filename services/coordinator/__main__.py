"""restem coordinator: `python -m services.coordinator [--config FILE]`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


async def main_async(config_path: Path | None) -> None:
    from restem.coordinator.v1 import coordinator_pb2_grpc

    from shared.bus import EventBus
    from shared.configio import load_service_config
    from shared.grpc_server import ServiceBinding
    from shared.logs import setup_logging
    from shared.service import run_service
    from shared.store import open_store

    from .config import CoordinatorConfig
    from .events import Orchestrator
    from .grpc_api import RunApi
    from .reconcile import reconcile_all

    cfg = load_service_config(CoordinatorConfig, config_path, env_prefix="RESTEM_COORDINATOR")
    setup_logging("coordinator", cfg.log_level)
    bus = await EventBus.connect(cfg.nats, name="coordinator")
    await bus.ensure_topology()
    orchestrator = Orchestrator(bus, open_store(cfg.store))
    binding = ServiceBinding(
        coordinator_pb2_grpc.add_RunServiceServicer_to_server,
        RunApi(cfg, orchestrator),
        "restem.coordinator.v1.RunService",
    )

    async def reconcile(stop: asyncio.Event) -> None:
        # Once at start: re-enter every running run (see reconcile.py); events drive them after.
        await reconcile_all(orchestrator)

    async def events(stop: asyncio.Event) -> None:
        # Many tries: an event fails only while the store is unreachable, and a dead event fails its run.
        await bus.consume_events(
            "coordinator", orchestrator.on_event, stop=stop, max_deliver=cfg.event_max_deliver
        )

    async def sweep(stop: asyncio.Event) -> None:
        await orchestrator.sweep_dead_letters(stop, cfg.dead_letter_sweep_s)

    await run_service(
        "coordinator", cfg.grpc, bus, [binding], [reconcile, events, sweep], store=orchestrator.store
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.coordinator", description="restem coordinator service"
    )
    parser.add_argument(
        "--config", type=Path, help="YAML config file (env RESTEM_COORDINATOR__* overrides it)"
    )
    args = parser.parse_args()
    import shared  # noqa: F401  (puts the generated stubs on the import path)

    asyncio.run(main_async(args.config))


if __name__ == "__main__":
    main()
