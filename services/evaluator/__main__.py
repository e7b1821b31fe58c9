"""restem evaluator: `python -m services.evaluator [--config FILE]`."""

from __future__ import annotations

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
    from shared.llm.backends import configured_backend
    from shared.llm.checkpoint import pick_device
    from shared.service import env_prefix
    from shared.store import ArtifactStore
    from shared.worker import JobQueue, Wiring, WorkerState, run_worker_service

    from .config import EvaluatorConfig
    from .events import EvalHandler
    from .grpc_api import EvaluatorApi

    cfg = load_service_config(EvaluatorConfig, config_path, env_prefix=env_prefix("evaluator"))
    device = pick_device(cfg.device)
    backend = configured_backend(cfg.backend, cfg.vllm)

    async def wire(bus: EventBus, store: ArtifactStore, state: WorkerState) -> Wiring:
        checkpoints = CheckpointCache(
            store,
            cfg.cache_dir,
            device,
            max_batch_sequences=cfg.max_batch_sequences,
            load=backend[1] if backend else None,
        )
        state.backend = backend[0] if backend else cfg.backend
        # The services share one API token: the evaluator presents its own to the verifier.
        channel = aio_channel(cfg.verifier_address, server_token(cfg.grpc))
        verifier = verifier_pb2_grpc.VerifierServiceStub(channel)
        handle = EvalHandler(
            bus, store, checkpoints, verifier, cfg.verify_timeout_s, verify_concurrency=cfg.verify_concurrency
        )
        return Wiring(
            queues=[JobQueue("eval", ev.EvalJob, handle, concurrency=1)],
            bindings=[
                ServiceBinding.of(evaluator_pb2_grpc, "EvaluatorService", EvaluatorApi(checkpoints, state))
            ],
            close=channel.close,
        )

    await run_worker_service("evaluator", cfg, wire, device=device)


def main() -> None:
    from shared.service import entrypoint

    entrypoint("evaluator", main_async)


if __name__ == "__main__":
    main()
