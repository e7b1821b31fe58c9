"""Access control over real gRPC: bearer tokens on the services, credentials for NATS.

Every RPC except health and reflection needs ``authorization: Bearer <token>``; the CLI and the
Python client send it; services calling services (evaluator -> verifier) send theirs; NATS
credentials can come from files; no secret ever appears in a message.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr, ValidationError
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from restem.verifier.v1 import verifier_pb2, verifier_pb2_grpc

from shared import auth
from shared.bus import EventBus
from shared.client.client import RunClient
from shared.infra import NatsConfig, StoreConfig
from tests.fixtures import services

pytestmark = pytest.mark.integration

TOKEN = "t0ken-" + "x" * 26
GOOD = "name: access\ntask: {arithmetic: {train: 4, validation: 0, test: 2}}\nem: {shard_size: 4}\n"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-token"
    path.write_text(TOKEN + "\n")  # a trailing newline, as `kubectl create secret --from-file` keeps
    return path


@pytest.fixture
async def secured(nats_config, tmp_path, token_file):
    async with services.coordinator(nats_config, tmp_path, auth_token_file=token_file) as served:
        yield served


async def _call(address: str, md: Any, method: str = "ListRuns") -> Any:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RunServiceStub(channel)
        if method == "ListRuns":
            return await stub.ListRuns(pb.ListRunsRequest(), metadata=md, timeout=10)
        if method == "StartRun":
            return await stub.StartRun(pb.StartRunRequest(config_yaml=GOOD), metadata=md, timeout=10)
        if method == "WatchRun":
            return [r async for r in stub.WatchRun(pb.WatchRunRequest(run_id="x-1"), metadata=md, timeout=10)]
        return await stub.GetRun(pb.GetRunRequest(run_id="nope-1"), metadata=md, timeout=10)


@pytest.mark.parametrize("method", ["ListRuns", "StartRun", "WatchRun", "GetRun"])
async def test_no_token_is_unauthenticated_and_says_what_to_send(secured, method):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(secured.address, (), method)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in err.value.details()
    assert "RESTEM_API_TOKEN" in err.value.details() and method in err.value.details()


@pytest.mark.parametrize(
    "header",
    ["Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer"],
    ids=["wrong", "scheme", "longer", "shorter", "empty"],
)
async def test_wrong_token_is_unauthenticated_and_never_echoed(secured, header):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(secured.address, (("authorization", header),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "wrong" in err.value.details() and TOKEN not in err.value.details()


async def test_right_token_is_served(secured):
    md = auth.metadata(TOKEN)
    started = await _call(secured.address, md, "StartRun")
    listed = await _call(secured.address, (("authorization", f"bearer  {TOKEN}"),))  # scheme case-blind
    assert [r.run_id for r in listed.runs] == [started.run_id]


async def test_health_and_reflection_need_no_token(secured):
    async with grpc.aio.insecure_channel(secured.address) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(secured.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=5)]
    names = [s.name for s in replies[0].list_services_response.service]
    assert "restem.coordinator.v1.RunService" in names


async def test_public_reads_open_reads_only(nats_config, tmp_path):
    async with services.coordinator(
        nats_config, tmp_path, auth_token=SecretStr(TOKEN), public_reads=True
    ) as s:
        assert (await _call(s.address, ())).runs == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(s.address, (), "GetRun")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # got through to the handler
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(s.address, (), "StartRun")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _list_with_client(address: str, token: str | None) -> list[Any]:
    with RunClient(address, token=token) as client:
        return client.list_runs()


async def test_python_client_and_cli_send_the_token(secured, token_file, tmp_path):
    # The sync client and the CLI run off the event loop: the server lives on it.
    assert await asyncio.to_thread(_list_with_client, secured.address, TOKEN) == []
    with pytest.raises(grpc.RpcError) as err:
        await asyncio.to_thread(_list_with_client, secured.address, None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        base = {"PATH": "/usr/bin:/bin", "RESTEM_HOME": str(tmp_path / "nostack")}
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "shared.client", "--address", secured.address, *args, "list"],
            capture_output=True, text=True, env={**base, **env}, timeout=60,
        )  # fmt: skip

    ok = await cli("--token-file", str(token_file))
    assert ok.returncode == 0, ok.stderr
    assert (await cli(RESTEM_API_TOKEN=TOKEN)).returncode == 0
    assert (await cli(RESTEM_API_TOKEN_FILE=str(token_file))).returncode == 0
    refused = await cli()
    assert (
        refused.returncode == 7 and "UNAUTHENTICATED" in refused.stderr and "Traceback" not in refused.stderr
    )
    missing = await cli("--token-file", str(tmp_path / "no-such-file"))
    assert missing.returncode == 2 and "cannot read the API token file" in missing.stderr


async def test_evaluator_channel_presents_its_token_to_the_verifier(tmp_path):
    item = verifier_pb2.VerifyItem(task="arithmetic", reference_json="42", completion="The answer is 42.")
    request = verifier_pb2.VerifyRequest(items=[item])
    async with services.verifier(tmp_path, grpc={"auth_token": SecretStr(TOKEN)}) as v:
        async with auth.aio_channel(v.address, TOKEN) as channel:
            resp = await verifier_pb2_grpc.VerifierServiceStub(channel).Verify(request, timeout=10)
        assert resp.verdicts[0].correct
        async with auth.aio_channel(v.address, None) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await verifier_pb2_grpc.VerifierServiceStub(channel).Verify(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_config_errors_say_what_to_fix(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(auth.TokenError, match="is empty; put the token in it"):
        auth.read_token_file(empty)
    with pytest.raises(auth.TokenError, match=r"cannot read the API token file .*fix the path"):
        auth.read_token_file(tmp_path / "absent")
    with pytest.raises(auth.TokenError, match="empty API token"):
        auth.BearerAuthInterceptor("")


async def test_nats_and_s3_credentials_from_files(nats_server_auth, tmp_path):
    pw = tmp_path / "nats-password"
    pw.write_text(nats_server_auth.password + "\n")
    cfg = NatsConfig(url=nats_server_auth.url, user=nats_server_auth.user, password_file=pw, prefix="TEST")
    assert nats_server_auth.password not in repr(cfg) and nats_server_auth.password not in str(cfg)
    bus = await EventBus.connect(cfg, name="from-file")
    assert bus.connected
    await bus.close()
    with pytest.raises(ValidationError, match=r"nats.password_file .* cannot be read"):
        NatsConfig(password_file=tmp_path / "absent")
    (tmp_path / "ak").write_text("AKIA-from-file")
    (tmp_path / "sk").write_text("sk-from-file\n")
    s3 = StoreConfig(kind="s3", access_key_file=tmp_path / "ak", secret_key_file=tmp_path / "sk")
    assert s3.secret_key is not None and s3.secret_key.get_secret_value() == "sk-from-file"
    assert "sk-from-file" not in repr(s3)
