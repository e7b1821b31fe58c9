"""restem evaluator: `python -m services.evaluator [--config FILE]`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


async def main_async(config_path: Path | None) -> None:
    from restem.evaluator.v1 import evaluator_pb2_grpc
    from restem.events.v1 import events_pb2 as ev
    from restem.verifier.v1 import verifier_pb2_grpc

    from shared.artifacts import CheckpointCache
    from shared.auth import aio_channel, server_token
    from shared.bus import EventBus
    from shared.configio import load_service_config
    from shared.grpc_server import ServiceBinding
    from shared.llm.checkpoint import pick_device
    from shared.logs import setup_logging
    from shared.service import run_service
    from shared.store import open_store
    from shared.worker import WorkerState, run_is_over, typed_handler

    from .config import EvaluatorConfig
    from .events import EvalHandler
    from .grpc_api import EvaluatorApi

    cfg = load_service_config(EvaluatorConfig, config_path, env_prefix="RESTEM_EVALUATOR")
    setup_logging("evaluator", cfg.log_level)
    device = pick_device(cfg.device)
    bus = await EventBus.connect(cfg.nats, name="evaluator")
    await bus.ensure_topology()
    store = open_store(cfg.store)
    checkpoints = CheckpointCache(store, cfg.cache_dir, device, max_batch_sequences=cfg.max_batch_sequences)
    state = WorkerState("evaluator", device=device)
    # The services share one API token: the evaluator presents its own to the verifier.
    channel = aio_channel(cfg.verifier_address, server_token(cfg.grpc))
    verifier = verifier_pb2_grpc.VerifierServiceStub(channel)
    handle = EvalHandler(bus, store, checkpoints, verifier, cfg.verify_timeout_s)
    handler = typed_handler(bus, "eval", ev.EvalJob, handle, state, max_deliver=cfg.max_deliver)
    binding = ServiceBinding(
        evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server,
        EvaluatorApi(checkpoints, state),
        "restem.evaluator.v1.EvaluatorService",
    )

    async def worker(stop: asyncio.Event) -> None:
        await bus.run_worker(
            "eval",
            handler,
            stop=stop,
            concurrency=1,
            ack_wait_s=cfg.ack_wait_s,
            max_deliver=cfg.max_deliver,
            abandon_if=run_is_over(bus),
        )

    try:
        await run_service("evaluator", cfg.grpc, bus, [binding], [worker], store=store)
    finally:
        await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.evaluator", description="restem evaluator service"
    )
    parser.add_argument("--config", type=Path, help="YAML config file (env RESTEM_EVALUATOR__* overrides it)")
    args = parser.parse_args()
    import shared  # noqa: F401  (puts the generated stubs on the import path)

    asyncio.run(main_async(args.config))


if __name__ == "__main__":
    main()
