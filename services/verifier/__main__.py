"""restem verifier: `python -m services.verifier [--config FILE]`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


async def main_async(config_path: Path | None) -> None:
    from restem.verifier.v1 import verifier_pb2_grpc

    from shared.bus import EventBus
    from shared.configio import load_service_config
    from shared.grpc_server import ServiceBinding
    from shared.logs import setup_logging
    from shared.service import run_service
    from shared.store import open_store
    from shared.worker import WorkerState, run_is_over, typed_handler

    from .checkers import Checkers
    from .config import VerifierConfig
    from .events import VerifyHandler
    from .grpc_api import VerifierApi

    cfg = load_service_config(VerifierConfig, config_path, env_prefix="RESTEM_VERIFIER")
    setup_logging("verifier", cfg.log_level)
    from restem.events.v1 import events_pb2 as ev

    bus = await EventBus.connect(cfg.nats, name="verifier")
    await bus.ensure_topology()
    store = open_store(cfg.store)
    state = WorkerState("verifier", device="cpu")
    checkers = Checkers(cfg.sandbox)
    if cfg.sandbox.start_at_boot:
        await checkers.start()  # a pod that cannot sandbox fails here, before it takes work
    handler = typed_handler(
        bus,
        "verify",
        ev.VerifyJob,
        VerifyHandler(bus, store, checkers),
        state,
        max_deliver=cfg.max_deliver,
    )
    binding = ServiceBinding(
        verifier_pb2_grpc.add_VerifierServiceServicer_to_server,
        VerifierApi(cfg, state, checkers),
        "restem.verifier.v1.VerifierService",
    )

    async def worker(stop: asyncio.Event) -> None:
        await bus.run_worker(
            "verify",
            handler,
            stop=stop,
            concurrency=cfg.concurrency,
            ack_wait_s=cfg.ack_wait_s,
            max_deliver=cfg.max_deliver,
            abandon_if=run_is_over(bus),
        )

    try:
        await run_service(
            "verifier", cfg.grpc, bus, [binding], [worker], healthy=checkers.healthy, store=store
        )
    finally:
        await asyncio.to_thread(checkers.close)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.verifier", description="restem verifier service"
    )
    parser.add_argument("--config", type=Path, help="YAML config file (env RESTEM_VERIFIER__* overrides it)")
    args = parser.parse_args()
    import shared  # noqa: F401  (puts the generated stubs on the import path)

    asyncio.run(main_async(args.config))


if __name__ == "__main__":
    main()
