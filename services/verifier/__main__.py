"""restem verifier: `python -m services.verifier [--config FILE]`."""

from __future__ import annotations

from pathlib import Path


async def main_async(config_path: Path | None) -> None:
    import asyncio

    from restem.events.v1 import events_pb2 as ev
    from restem.verifier.v1 import verifier_pb2_grpc

    from shared.bus import EventBus
    from shared.configio import load_service_config
    from shared.grpc_server import ServiceBinding
    from shared.service import env_prefix
    from shared.store import ArtifactStore
    from shared.worker import JobQueue, Wiring, WorkerState, run_worker_service

    from . import metrics
    from .checkers import Checkers
    from .config import VerifierConfig
    from .events import VerifyHandler
    from .grpc_api import VerifierApi

    cfg = load_service_config(VerifierConfig, config_path, env_prefix=env_prefix("verifier"))

    async def wire(bus: EventBus, store: ArtifactStore, state: WorkerState) -> Wiring:
        checkers = Checkers(cfg.sandbox, store)
        metrics.register(checkers)
        if cfg.sandbox.start_at_boot:
            await checkers.start()  # a pod that cannot sandbox fails here, before it takes work

        async def close() -> None:
            await asyncio.to_thread(checkers.close)

        return Wiring(
            queues=[JobQueue("verify", ev.VerifyJob, VerifyHandler(bus, store, checkers), cfg.concurrency)],
            bindings=[
                ServiceBinding.of(verifier_pb2_grpc, "VerifierService", VerifierApi(cfg, state, checkers))
            ],
            healthy=checkers.healthy,
            close=close,
        )

    await run_worker_service("verifier", cfg, wire, device="cpu")


def main() -> None:
    from shared.service import entrypoint

    entrypoint("verifier", main_async)


if __name__ == "__main__":
    main()
