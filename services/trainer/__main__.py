"""restem trainer: `python -m services.trainer [--config FILE]`."""

from __future__ import annotations

import os
from pathlib import Path


async def main_async(config_path: Path | None) -> None:
    from restem.events.v1 import events_pb2 as ev
    from restem.trainer.v1 import trainer_pb2_grpc

    from shared.artifacts import CheckpointCache
    from shared.bus import EventBus
    from shared.configio import load_service_config
    from shared.grpc_server import ServiceBinding
    from shared.llm.checkpoint import pick_device
    from shared.service import env_prefix
    from shared.store import ArtifactStore
    from shared.worker import JobQueue, Wiring, WorkerState, run_worker_service

    from .config import TrainerConfig
    from .events import PrepareHandler, TrainHandler
    from .grpc_api import TrainerApi

    cfg = load_service_config(TrainerConfig, config_path, env_prefix=env_prefix("trainer"))
    if not cfg.hub.offline:  # before huggingface_hub is imported: it reads the variable once
        os.environ["HF_HUB_OFFLINE"] = "0"
    device = pick_device(cfg.device)

    async def wire(bus: EventBus, store: ArtifactStore, state: WorkerState) -> Wiring:
        checkpoints = CheckpointCache(store, cfg.cache_dir, device)
        return Wiring(
            queues=[
                JobQueue(
                    "prepare",
                    ev.PrepareJob,
                    PrepareHandler(bus, store, cfg.work_dir, cfg.import_cache_dir, cfg.store, cfg.hub),
                ),
                JobQueue("train", ev.TrainJob, TrainHandler(bus, store, checkpoints, cfg, device)),
            ],
            bindings=[ServiceBinding.of(trainer_pb2_grpc, "TrainerService", TrainerApi(state))],
        )

    await run_worker_service("trainer", cfg, wire, device=device)


def main() -> None:
    from shared.service import entrypoint

    entrypoint("trainer", main_async)


if __name__ == "__main__":
    main()
