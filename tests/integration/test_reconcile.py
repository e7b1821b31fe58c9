"""A restarted coordinator re-enters its runs; services say NOT_SERVING while the store is down.

Real nats-server, real store, real gRPC. Lost job messages are simulated by purging the work
queue; the stream's duplicate window is shortened to one second so a re-publish after a loss is
not swallowed by the 10-minute dedupe that protects normal operation (checked separately).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js import errors as jserr
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from restem.events.v1 import events_pb2 as ev

import shared.bus
from services.coordinator.reconcile import reconcile_all
from shared import keys
from shared.bus import EventBus
from shared.grpc_server import ServiceBinding, serve
from shared.infra import GrpcConfig
from shared.service import StoreProbe
from shared.store import S3Store, open_store
from tests.fixtures import services
from tests.fixtures.proxy import Proxy

pytestmark = pytest.mark.integration

CONFIG = "name: resumed\ntask: {arithmetic: {train: 8, validation: 4, test: 4}}\nem: {shard_size: 4}\n"


async def _queued(bus: EventBus, run_id: str) -> list[str]:
    """Nats-Msg-Ids of the jobs queued for a run, in stream order."""
    ids, seq = [], 1
    while True:
        try:
            raw = await bus._js.get_msg(
                bus.jobs_stream, seq=seq, subject=f"restem.jobs.*.{run_id}", next=True
            )
        except jserr.NotFoundError:
            return ids
        ids.append(str((raw.headers or {}).get("Nats-Msg-Id")))
        seq = int(raw.seq or seq) + 1


@pytest.fixture
def short_dedupe(monkeypatch):
    monkeypatch.setattr(shared.bus, "_DUPLICATE_WINDOW_S", 1.0)


async def test_restart_republishes_only_the_open_jobs_of_the_current_phase(
    nats_config, tmp_path, short_dedupe
):
    async with services.coordinator(nats_config, tmp_path) as c:
        assert c.bus is not None and c.orchestrator is not None
        async with grpc.aio.insecure_channel(c.address) as channel:
            stub = pb_grpc.RunServiceStub(channel)
            run_id = (await stub.StartRun(pb.StartRunRequest(config_yaml=CONFIG), timeout=10)).run_id
            done = ev.PrepareDone(run_id=run_id, job_id=keys.job_id("prepare", run_id), model_key="m")
            await c.bus.publish_event(run_id, "prepare_done", done.SerializeToString(), msg_id="p.done")
            evals = [keys.job_id("eval", run_id, 0, s) for s in ("validation", "test")]
            for _ in range(200):
                if sorted(await _queued(c.bus, run_id)) == sorted([keys.job_id("prepare", run_id), *evals]):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"eval jobs not queued: {await _queued(c.bus, run_id)}")
            # The validation split reports back; then every queued message is lost.
            result = ev.EvalDone(run_id=run_id, iteration=0, split="validation", num_problems=4)
            await c.bus.publish_event(run_id, "eval_done", result.SerializeToString(), msg_id="v.done")
            for _ in range(200):
                run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)).run
                if len(run.iterations[0].evals) == 1:
                    break
                await asyncio.sleep(0.05)
            await c.bus.purge_jobs(run_id)
            await asyncio.sleep(1.2)  # past the (shortened) duplicate window

    # A new coordinator process: same NATS, same store.
    async with services.coordinator(nats_config, tmp_path, name="restarted") as c2:
        assert c2.orchestrator is not None and c2.bus is not None
        assert await reconcile_all(c2.orchestrator) == {run_id: 1}
        assert await _queued(c2.bus, run_id) == [keys.job_id("eval", run_id, 0, "test")]
        # Reconciling again at once is deduplicated by the job id: still one queued message.
        assert await reconcile_all(c2.orchestrator) == {run_id: 1}
        assert await _queued(c2.bus, run_id) == [keys.job_id("eval", run_id, 0, "test")]
        run, _ = await c2.orchestrator.load(run_id)
        assert run.status == pb.RUN_STATUS_RUNNING and run.phase == pb.PHASE_EVALUATING


async def test_a_finished_run_without_its_report_gets_it_on_restart(nats_config, tmp_path):
    async with services.coordinator(nats_config, tmp_path) as c:
        assert c.orchestrator is not None and c.bus is not None and c.store is not None
        async with grpc.aio.insecure_channel(c.address) as channel:
            stub = pb_grpc.RunServiceStub(channel)
            run_id = (await stub.StartRun(pb.StartRunRequest(config_yaml=CONFIG), timeout=10)).run_id
            await stub.CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=10)
        # As if the coordinator died after finishing the run but before its report was written.
        run, revision = await c.orchestrator.load(run_id)
        report_key, run.report_key = run.report_key, ""
        await c.bus.runs.update(run_id, run.SerializeToString(), revision=revision)
        c.store.delete(report_key)
        assert await reconcile_all(c.orchestrator) == {run_id: 0}
        run, _ = await c.orchestrator.load(run_id)
        assert run.report_key == report_key and c.store.exists(report_key)
        assert await reconcile_all(c.orchestrator) == {}  # nothing left to do


# --- health follows the store ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _health_server(tmp_path: Path, probe: StoreProbe) -> AsyncIterator[str]:
    port_file = tmp_path / "port"
    stop = asyncio.Event()
    binding = ServiceBinding(lambda servicer, server: None, None, "restem.test.v1.Nothing")
    tasks = [
        asyncio.create_task(serve([binding], GrpcConfig(port_file=port_file, grace_s=0), healthy=lambda: probe.healthy, stop=stop)),
        asyncio.create_task(probe.run(stop)),
    ]  # fmt: skip
    while not port_file.exists():
        await asyncio.sleep(0.02)
    try:
        yield f"127.0.0.1:{port_file.read_text()}"
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _status_becomes(address: str, want: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status != want:
            assert time.monotonic() < deadline, f"health never became {want}"
            await asyncio.sleep(0.1)


async def test_health_is_not_serving_while_the_store_is_unreachable(s3_store_config, tmp_path):
    real_port = int(s3_store_config.endpoint.rsplit(":", 1)[1])
    proxy = Proxy(real_port)
    await proxy.start()
    cfg = s3_store_config.model_copy(update={"endpoint": f"127.0.0.1:{proxy.port}"})
    store = await asyncio.to_thread(open_store, cfg)
    assert isinstance(store, S3Store)
    store._tries = 2  # keep the probe's own retries short in a test
    probe = StoreProbe(store, every_s=0.2, timeout_s=3.0)
    async with _health_server(tmp_path, probe) as address:
        await _status_becomes(address, health_pb2.HealthCheckResponse.SERVING)
        await proxy.cut()
        await _status_becomes(address, health_pb2.HealthCheckResponse.NOT_SERVING)
        await proxy.start()  # same port: the store is back
        await _status_becomes(address, health_pb2.HealthCheckResponse.SERVING)


async def test_health_follows_nats_and_the_api_works_again_after_a_nats_restart(
    nats_server, nats_config, tmp_path
):
    async with (
        services.coordinator(nats_config, tmp_path) as c,
        grpc.aio.insecure_channel(c.address) as channel,
    ):
        stub = pb_grpc.RunServiceStub(channel)
        before = (await stub.StartRun(pb.StartRunRequest(config_yaml=CONFIG), timeout=10)).run_id
        await _status_becomes(c.address, health_pb2.HealthCheckResponse.SERVING)
        nats_server.stop()
        await _status_becomes(c.address, health_pb2.HealthCheckResponse.NOT_SERVING)
        nats_server.start()  # same port, same JetStream storage
        await _status_becomes(c.address, health_pb2.HealthCheckResponse.SERVING, timeout_s=30)
        # The run state in the KV survived, and the API can start and read runs again.
        run = (await stub.GetRun(pb.GetRunRequest(run_id=before), timeout=10)).run
        assert run.run_id == before and run.status == pb.RUN_STATUS_RUNNING
        second = CONFIG.replace("name: resumed", "name: after-restart")
        after = (await stub.StartRun(pb.StartRunRequest(config_yaml=second), timeout=10)).run_id
        assert after != before
        listed = (await stub.ListRuns(pb.ListRunsRequest(), timeout=10)).runs
        assert {r.run_id for r in listed} >= {before, after}
