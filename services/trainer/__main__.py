"""restem trainer: `python -m services.trainer [--config FILE]`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


async def main_async(config_path: Path | None) -> None:
    from restem.events.v1 import events_pb2 as ev
    from restem.trainer.v1 import trainer_pb2_grpc

    from shared.artifacts import CheckpointCache
    from shared.auth import server_token
    from shared.bus import EventBus
    from shared.configio import load_service_config
    from shared.grpc_server import ServiceBinding
    from shared.llm.checkpoint import pick_device
    from shared.logs import setup_logging
    from shared.service import run_service
    from shared.store import open_store
    from shared.worker import WorkerState, run_is_over, typed_handler

    from .config import TrainerConfig
    from .events import PrepareHandler, TrainHandler, TrainSettings
    from .grpc_api import TrainerApi

    cfg = load_service_config(TrainerConfig, config_path, env_prefix="RESTEM_TRAINER")
    setup_logging("trainer", cfg.log_level)
    device = pick_device(cfg.device)
    bus = await EventBus.connect(cfg.nats, name="trainer")
    await bus.ensure_topology()
    store = open_store(cfg.store)
    checkpoints = CheckpointCache(store, cfg.cache_dir, device)
    state = WorkerState("trainer", device=device)
    prepare = typed_handler(
        bus,
        "prepare",
        ev.PrepareJob,
        PrepareHandler(bus, store, cfg.work_dir, cfg.import_cache_dir),
        state,
        max_deliver=cfg.max_deliver,
    )
    train = typed_handler(
        bus,
        "train",
        ev.TrainJob,
        TrainHandler(
            bus,
            store,
            checkpoints,
            TrainSettings(
                work_dir=cfg.work_dir,
                device=device,
                nproc=cfg.nproc,
                sharding=cfg.sharding,
                verifier_address=cfg.verifier_address,
                verify_timeout_s=cfg.verify_timeout_s,
                verify_token=server_token(cfg.grpc),
                store_config=cfg.store,
            ),
        ),
        state,
        max_deliver=cfg.max_deliver,
    )
    binding = ServiceBinding(
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
        TrainerApi(state),
        "restem.trainer.v1.TrainerService",
    )

    async def prepare_worker(stop: asyncio.Event) -> None:
        await bus.run_worker(
            "prepare",
            prepare,
            stop=stop,
            ack_wait_s=cfg.ack_wait_s,
            max_deliver=cfg.max_deliver,
            abandon_if=run_is_over(bus),
        )

    async def train_worker(stop: asyncio.Event) -> None:
        await bus.run_worker(
            "train",
            train,
            stop=stop,
            ack_wait_s=cfg.ack_wait_s,
            max_deliver=cfg.max_deliver,
            abandon_if=run_is_over(bus),
        )

    await run_service("trainer", cfg.grpc, bus, [binding], [prepare_worker, train_worker], store=store)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.trainer", description="restem trainer service")
    parser.add_argument("--config", type=Path, help="YAML config file (env RESTEM_TRAINER__* overrides it)")
    args = parser.parse_args()
    import shared  # noqa: F401  (puts the generated stubs on the import path)

    asyncio.run(main_async(args.config))


if __name__ == "__main__":
    main()
