"""A small Python client for the coordinator's RunService, with a deadline on every call."""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.coordinator.v1 import coordinator_pb2_grpc as pb_grpc

from shared.auth import metadata

DEFAULT_TIMEOUT_S = 30.0


class _AddToken(  # type: ignore[misc]
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor
):
    """Adds the bearer token to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._md = metadata(token)

    def _details(self, details: Any) -> Any:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), *self._md],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


class _CallDetails(
    namedtuple(  # grpc.ClientCallDetails has no constructor of its own
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class RunClient:
    def __init__(
        self, address: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, token: str | None = None
    ) -> None:
        """`token`: the bearer token to send (see `shared.auth.client_token`); None sends none."""
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(address)
        if token:
            self.channel = grpc.intercept_channel(self.channel, _AddToken(token))
        self.stub = pb_grpc.RunServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RunClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stat_file(self, sha256: str) -> pb.StatFileResponse:
        return self.stub.StatFile(pb.StatFileRequest(sha256=sha256), timeout=self.timeout_s)

    def upload_file(self, path: Path, sha256: str, size: int) -> pb.UploadFileResponse:
        """Stream `path` to the store (see `shared.client.files`); the deadline allows 1 MB/s."""
        from shared.client.files import chunks

        def parts() -> Iterator[pb.UploadFileRequest]:
            yield pb.UploadFileRequest(header=pb.FileHeader(name=path.name, sha256=sha256, size=size))
            for block in chunks(path):
                yield pb.UploadFileRequest(chunk=block)

        return self.stub.UploadFile(parts(), timeout=self.timeout_s + size / 1e6)

    def start_run(self, config_yaml: str, **fork: Any) -> pb.Run:
        """`fork`: from_run, from_iteration, from_reverification (a fork of a finished run)."""
        # StartRun writes the datasets to the store before answering: give it more time.
        request = pb.StartRunRequest(config_yaml=config_yaml, **fork)
        return self.stub.StartRun(request, timeout=self.timeout_s * 4).run

    def get_run(self, run_id: str) -> pb.Run:
        return self.stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=self.timeout_s).run

    def list_runs(self) -> list[pb.Run]:
        return list(self.stub.ListRuns(pb.ListRunsRequest(), timeout=self.timeout_s).runs)

    def cancel_run(self, run_id: str) -> pb.Run:
        return self.stub.CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=self.timeout_s).run

    def watch_run(self, run_id: str, *, timeout_s: float | None = None) -> Iterator[pb.Run]:
        """Snapshots of the run until it finishes (a long stream: its own deadline, none by default)."""
        for resp in self.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=timeout_s):
            yield resp.run

    def report(self, run_id: str) -> dict[str, Any]:
        return self.report_files(run_id)[0]

    def report_files(self, run_id: str) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The report document and its rendered files (report.md, PNG plots) by name."""
        resp = self.stub.GetReport(pb.GetReportRequest(run_id=run_id), timeout=self.timeout_s)
        return json.loads(resp.report_json), dict(resp.files)

    def lineage(self, run_id: str, iteration: int = 0, *, check: bool = False) -> pb.GetLineageResponse:
        # A check reads every artifact again (checkpoints whole): no deadline.
        request = pb.GetLineageRequest(run_id=run_id, iteration=iteration, check=check)
        return self.stub.GetLineage(request, timeout=None if check else self.timeout_s * 4)

    def reverify(self, run_id: str, iteration: int = 0) -> pb.ReverifyRunResponse:
        request = pb.ReverifyRunRequest(run_id=run_id, iteration=iteration)
        return self.stub.ReverifyRun(request, timeout=self.timeout_s * 4)

    def recover(self) -> pb.RecoverRunsResponse:
        return self.stub.RecoverRuns(pb.RecoverRunsRequest(), timeout=self.timeout_s * 10)


def check_health(address: str, service: str = "", timeout_s: float = 2.0) -> str:
    """SERVING / NOT_SERVING / UNKNOWN / UNREACHABLE for one gRPC endpoint."""
    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return "UNREACHABLE"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
