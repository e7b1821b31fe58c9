"""restem sampler: `python -m services.sampler [--config FILE]`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.llm.backends import Backend


async def main_async(config_path: Path | None, backend: Backend | None = None) -> None:
    """Run the sampler; `backend` replaces the configured one (the benchmark harness's simulated backend)."""
    from restem.events.v1 import events_pb2 as ev
    from restem.sampler.v1 import sampler_pb2_grpc

    from shared.artifacts import CheckpointCache
    from shared.bus import EventBus
    from shared.configio import load_service_config
    from shared.grpc_server import ServiceBinding
    from shared.llm.backends import configured_backend
    from shared.llm.checkpoint import pick_device
    from shared.service import env_prefix
    from shared.store import ArtifactStore
    from shared.worker import JobQueue, Wiring, WorkerState, run_worker_service

    from .config import SamplerConfig
    from .events import SampleHandler
    from .grpc_api import SamplerApi
    from .prefetch import prefetch_hinted

    cfg = load_service_config(SamplerConfig, config_path, env_prefix=env_prefix("sampler"))
    device = pick_device(cfg.device)
    backend = backend or configured_backend(cfg.backend, cfg.vllm)

    async def wire(bus: EventBus, store: ArtifactStore, state: WorkerState) -> Wiring:
        load = backend[1] if backend else None
        checkpoints = CheckpointCache(
            store, cfg.cache_dir, device, max_batch_sequences=cfg.max_batch_sequences, load=load
        )
        state.backend = backend[0] if backend else cfg.backend
        handle = SampleHandler(bus, store, checkpoints, cfg.max_samples_per_job)
        spread = cfg.prefetch_spread_s
        close = None if spread is None else await prefetch_hinted(bus, checkpoints, spread)
        return Wiring(
            # One shard generates at a time (it already uses every core, or the whole GPU); the next
            # one is pulled as it finishes generating, while it writes its samples (pipelined).
            queues=[JobQueue("sample", ev.SampleJob, handle, concurrency=2, pipelined=True)],
            bindings=[ServiceBinding.of(sampler_pb2_grpc, "SamplerService", SamplerApi(checkpoints, state))],
            close=close,
        )

    await run_worker_service("sampler", cfg, wire, device=device)


def main() -> None:
    from shared.service import entrypoint

    entrypoint("sampler", main_async)


if __name__ == "__main__":
    main()
