"""gRPC bootstrap shared by the five services: aio server, health, reflection, graceful drain.

Health is `grpc.health.v1`, reported for the overall server ("") and each service name, and
recomputed every second from the service's own dependency check (NATS connected, store reachable):
a service whose dependencies are down answers NOT_SERVING. Reflection is on so `grpcurl` and
friends work without the protos. Access control: when `config` names a token, every other RPC
needs it (`shared.auth`). Not handled here: TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared.auth import BearerAuthInterceptor, server_token
from shared.errors import StatusError
from shared.infra import GrpcConfig
from shared.telemetry import write_port_file

log = logging.getLogger("restem.grpc")


def _connection_age(seconds: float) -> list[tuple[str, int]]:
    if seconds <= 0:
        return []
    ms = int(seconds * 1000)
    return [("grpc.max_connection_age_ms", ms), ("grpc.max_connection_age_grace_ms", ms)]


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to mount: its generated `add_*_to_server`, the servicer, its full name."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    full_name: str

    @classmethod
    def of(cls, grpc_module: Any, service: str, servicer: Any) -> ServiceBinding:
        """`service` of a generated `<pkg>/<name>_pb2_grpc` module, by protoc's names for its adder and package."""
        package = grpc_module.__name__.rpartition(".")[0]
        return cls(getattr(grpc_module, f"add_{service}Servicer_to_server"), servicer, f"{package}.{service}")


def status_code(exc: StatusError) -> grpc.StatusCode:
    """The gRPC status of an error a request caused: the one its type names."""
    return grpc.StatusCode[exc.status]


async def abort_for(
    context: grpc.aio.ServicerContext, exc: StatusError, prefix: str = "", message: str | None = None
) -> NoReturn:
    """End the call with `exc`'s status and message (or `message`), after `prefix`, which says where."""
    await context.abort(status_code(exc), f"{prefix}{exc if message is None else message}")
    raise AssertionError("unreachable")  # context.abort raises


async def _track_health(
    servicer: health.aio.HealthServicer, names: Sequence[str], check: Callable[[], bool], stop: asyncio.Event
) -> None:
    last = None
    while not stop.is_set():
        ok = check()
        if ok != last:
            status = (
                health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *names):
                await servicer.set(name, status)
            log.info("health: %s", "SERVING" if ok else "NOT_SERVING")
            last = ok
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def serve(
    bindings: Sequence[ServiceBinding],
    config: GrpcConfig,
    *,
    healthy: Callable[[], bool],
    stop: asyncio.Event,
) -> None:
    """Serve until `stop` is set, then drain in-flight RPCs for `config.grace_s` seconds."""
    limit = config.max_message_mb * 1024 * 1024
    token = server_token(config)
    interceptors = [BearerAuthInterceptor(token, public_reads=config.public_reads)] if token else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not start silently
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            *_connection_age(config.max_connection_age_s),
        ],
    )
    for b in bindings:
        b.add_to_server(b.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [b.full_name for b in bindings]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {config.host}:{config.port}; choose another grpc.port")
    await server.start()
    access = "bearer token required" if token else "open (no grpc.auth_token set)"
    log.info("gRPC listening on %s:%d (%s); access: %s", config.host, port, ", ".join(names), access)
    if config.port_file is not None:
        write_port_file(config.port_file, port)
    tracker = asyncio.create_task(_track_health(health_servicer, names, healthy, stop))
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.grace_s)
    await tracker
    log.info("gRPC server stopped")
