"""restem sampler: `python -m services.sampler [--config FILE]`."""

from __future__ import annotations

import argparse
import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import SamplerConfig

# (name shown by GetStats, checkpoint directory -> generator)
Backend = tuple[str, Callable[[Path], Any]]


def configured_backend(cfg: SamplerConfig) -> Backend | None:
    """The configured backend's loader; None for transformers (the checkpoint cache's default)."""
    if cfg.backend == "vllm":
        from .vllm_backend import VllmGenerator, import_vllm

        import_vllm()  # a missing vllm fails the start-up, not every job
        return "vllm", functools.partial(VllmGenerator.load, settings=cfg.vllm)
    return None


async def main_async(config_path: Path | None, backend: Backend | None = None) -> None:
    """Run the sampler; `backend` replaces the configured one (the benchmark harness's simulated backend)."""
    from restem.events.v1 import events_pb2 as ev
    from restem.sampler.v1 import sampler_pb2_grpc

    from shared.artifacts import CheckpointCache
    from shared.bus import EventBus
    from shared.configio import load_service_config
    from shared.grpc_server import ServiceBinding
    from shared.llm.checkpoint import pick_device
    from shared.logs import setup_logging
    from shared.service import run_service
    from shared.store import open_store
    from shared.worker import WorkerState, run_is_over, typed_handler

    from .config import SamplerConfig
    from .events import SampleHandler
    from .grpc_api import SamplerApi

    cfg = load_service_config(SamplerConfig, config_path, env_prefix="RESTEM_SAMPLER")
    setup_logging("sampler", cfg.log_level)
    device = pick_device(cfg.device)
    backend = backend or configured_backend(cfg)
    bus = await EventBus.connect(cfg.nats, name="sampler")
    await bus.ensure_topology()
    store = open_store(cfg.store)
    checkpoints = CheckpointCache(
        store,
        cfg.cache_dir,
        device,
        max_batch_sequences=cfg.max_batch_sequences,
        load=backend[1] if backend else None,
    )
    state = WorkerState("sampler", device=device, backend=backend[0] if backend else cfg.backend)
    handle = SampleHandler(bus, store, checkpoints, cfg.max_samples_per_job)
    handler = typed_handler(bus, "sample", ev.SampleJob, handle, state, max_deliver=cfg.max_deliver)
    binding = ServiceBinding(
        sampler_pb2_grpc.add_SamplerServiceServicer_to_server,
        SamplerApi(checkpoints, state),
        "restem.sampler.v1.SamplerService",
    )

    async def worker(stop: asyncio.Event) -> None:
        # One shard at a time: a shard already uses every core (or the whole GPU).
        await bus.run_worker(
            "sample",
            handler,
            stop=stop,
            concurrency=1,
            ack_wait_s=cfg.ack_wait_s,
            max_deliver=cfg.max_deliver,
            abandon_if=run_is_over(bus),
        )

    await run_service("sampler", cfg.grpc, bus, [binding], [worker], store=store)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.sampler", description="restem sampler service")
    parser.add_argument("--config", type=Path, help="YAML config file (env RESTEM_SAMPLER__* overrides it)")
    args = parser.parse_args()
    import shared  # noqa: F401  (puts the generated stubs on the import path)

    asyncio.run(main_async(args.config))


if __name__ == "__main__":
    main()
