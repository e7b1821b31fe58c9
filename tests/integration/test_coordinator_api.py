"""RunService over real gRPC, a real nats-server and a real store (no model: no job is executed).

Checks what a client sees: statuses and messages for bad input, that nothing stored changes when
a run is refused, and the life of a run that is started and cancelled.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import nats
import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from restem.events.v1 import events_pb2 as ev

from services.coordinator.config import CoordinatorConfig
from services.coordinator.events import Orchestrator
from services.coordinator.grpc_api import RunApi
from shared import keys
from shared.bus import EventBus
from shared.grpc_server import ServiceBinding, serve
from shared.infra import GrpcConfig, StoreConfig
from shared.store import LocalStore

pytestmark = pytest.mark.integration

GOOD = "name: api-run\ntask: {arithmetic: {train: 10, validation: 2, test: 4}}\nem: {shard_size: 4}\n"


@pytest.fixture
async def api(nats_config, tmp_path):
    port_file = tmp_path / "port"
    cfg = CoordinatorConfig(
        nats=nats_config,
        store=StoreConfig(root=tmp_path / "store"),
        grpc=GrpcConfig(port_file=port_file, grace_s=0),
    )
    bus = await EventBus.connect(cfg.nats, name="test-coordinator")
    await bus.ensure_topology()
    store = LocalStore(tmp_path / "store")
    orc = Orchestrator(bus, store)
    stop = asyncio.Event()
    binding = ServiceBinding(
        pb_grpc.add_RunServiceServicer_to_server, RunApi(cfg, orc), "restem.coordinator.v1.RunService"
    )
    server = asyncio.create_task(serve([binding], cfg.grpc, healthy=lambda: bus.connected, stop=stop))
    events = asyncio.create_task(bus.consume_events("coordinator", orc.on_event, stop=stop))
    while not port_file.exists():
        await asyncio.sleep(0.02)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port_file.read_text()}")
    yield pb_grpc.RunServiceStub(channel), bus, store
    await channel.close()
    stop.set()
    await asyncio.gather(server, events)
    await bus.close()


def _files(root: Path) -> dict[str, bytes]:
    return (
        {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else {}
    )


@pytest.mark.parametrize(
    ("config", "code", "words"),
    [
        (
            "em: {cutoff: 0}",
            grpc.StatusCode.INVALID_ARGUMENT,
            "em.cutoff: Input should be greater than or equal to 1",
        ),
        ("sampling: {n: 0}", grpc.StatusCode.INVALID_ARGUMENT, "sampling.n"),
        (
            "sampling: {temperature: hot}",
            grpc.StatusCode.INVALID_ARGUMENT,
            "sampling.temperature: Input should be a valid number",
        ),
        ("surprise: true", grpc.StatusCode.INVALID_ARGUMENT, "surprise: unknown field"),
        ("task: {name: chess}", grpc.StatusCode.INVALID_ARGUMENT, "task.name"),
        ("model: {base: /no/such/model}", grpc.StatusCode.NOT_FOUND, "/no/such/model does not exist"),
        ("model: {base: 'builtin:gpt-17'}", grpc.StatusCode.NOT_FOUND, "unknown builtin model 'gpt-17'"),
        (
            "task: {name: gsm8k, files: {train: /no/train.jsonl, test: /no/test.jsonl}}",
            grpc.StatusCode.NOT_FOUND,
            "/no/train.jsonl does not exist",
        ),
    ],
)
async def test_start_run_rejects_bad_configs_and_stores_nothing(api, tmp_path, config, code, words):
    stub, _, _ = api
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartRun(pb.StartRunRequest(config_yaml=config), timeout=10)
    assert err.value.code() == code
    assert words in err.value.details()
    assert _files(tmp_path / "store") == {}


async def test_a_started_run_queues_its_prepare_job_and_can_be_cancelled(api, tmp_path):
    stub, bus, store = api
    resp = await stub.StartRun(pb.StartRunRequest(config_yaml=GOOD), timeout=10)
    run_id = resp.run_id
    assert run_id.startswith("api-run-") and resp.run.status == pb.RUN_STATUS_RUNNING
    assert resp.run.phase == pb.PHASE_PREPARING
    splits = {
        s: [json.loads(x) for x in store.get_bytes(keys.dataset_key(run_id, s)).splitlines()]
        for s in ("train", "validation", "test")
    }
    assert [len(v) for v in splits.values()] == [10, 2, 4]
    assert store.get_bytes(keys.config_key(run_id)).decode() == GOOD

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartRun(pb.StartRunRequest(config_yaml=GOOD), timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    listed = await stub.ListRuns(pb.ListRunsRequest(), timeout=10)
    assert [r.run_id for r in listed.runs] == [run_id]

    cancelled = await stub.CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=10)
    assert cancelled.run.status == pb.RUN_STATUS_CANCELLED
    assert await bus.purge_jobs(run_id) == 0, "the queued prepare job should already be purged"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=10)
    assert (
        err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already finished" in err.value.details()
    )

    report = json.loads((await stub.GetReport(pb.GetReportRequest(run_id=run_id), timeout=10)).report_json)
    assert report["status"] == "cancelled"

    # A late result of the cancelled run changes nothing.
    done = ev.PrepareDone(run_id=run_id, job_id=keys.job_id("prepare", run_id), model_key="models/x")
    await bus.publish_event(run_id, "prepare_done", done.SerializeToString(), msg_id="late-1")
    await asyncio.sleep(0.5)
    after = await stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)
    assert after.run.status == pb.RUN_STATUS_CANCELLED and len(after.run.iterations) == 0


async def test_unknown_and_malformed_run_ids(api):
    stub, _, _ = api
    for call, req in (
        (stub.GetRun, pb.GetRunRequest),
        (stub.CancelRun, pb.CancelRunRequest),
        (stub.GetReport, pb.GetReportRequest),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req(run_id="nope-123"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no run 'nope-123'" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetRun(pb.GetRunRequest(run_id="../etc/passwd"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_streams_progress_until_the_run_ends(api):
    stub, bus, _ = api
    run_id = (
        await stub.StartRun(pb.StartRunRequest(config_yaml=GOOD.replace("api-run", "watched")), timeout=10)
    ).run_id
    seen: list[pb.Run] = []

    async def watch() -> None:
        async for resp in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=30):
            seen.append(resp.run)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    done = ev.PrepareDone(run_id=run_id, job_id=keys.job_id("prepare", run_id), model_key="models/x")
    await bus.publish_event(run_id, "prepare_done", done.SerializeToString(), msg_id=f"{done.job_id}.done")
    while not any(r.phase == pb.PHASE_EVALUATING for r in seen):
        await asyncio.sleep(0.05)
    await stub.CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=10)
    await asyncio.wait_for(watcher, 10)
    assert seen[0].phase == pb.PHASE_PREPARING
    assert seen[-1].status == pb.RUN_STATUS_CANCELLED
    assert any(r.phase == pb.PHASE_EVALUATING and r.progress.total == 2 for r in seen)


async def test_concurrent_starts_with_one_name_start_exactly_one_run(api):
    stub, _, store = api
    config = GOOD.replace("api-run", "twin")
    calls = [stub.StartRun(pb.StartRunRequest(config_yaml=config), timeout=20) for _ in range(4)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    started = [r for r in results if isinstance(r, pb.StartRunResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(started) == 1 and len(refused) == 3, results
    assert all(e.code() == grpc.StatusCode.ALREADY_EXISTS and "'twin'" in e.details() for e in refused)
    listed = await stub.ListRuns(pb.ListRunsRequest(), timeout=10)
    assert [r.run_id for r in listed.runs] == [started[0].run_id]
    assert {p.split("/")[1] for p in store.list("runs/")} == {started[0].run_id}


async def test_watchers_that_leave_after_the_first_message_leave_no_subscription(api):
    # A client that cancels WatchRun right after the first message cancels the server's watcher
    # while it is being created; a subscription left behind would buffer every later update of
    # the run (over a long run, hundreds of MB of coordinator memory).
    stub, bus, _ = api
    run_id = (await stub.StartRun(pb.StartRunRequest(config_yaml=GOOD), timeout=10)).run_id
    await asyncio.sleep(0.5)
    subs_before = len(bus._nc._subs)
    for i in range(30):
        call = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=10)
        assert (await call.read()).run.run_id == run_id
        call.cancel()
        await asyncio.sleep(0.001 * (i % 10))  # leave at different points of the watcher's setup
    deadline = asyncio.get_running_loop().time() + 5
    while len(bus._nc._subs) > subs_before and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert len(bus._nc._subs) == subs_before


async def test_the_coordinator_reads_a_runs_problem_ids_not_its_datasets(api, tmp_path):
    stub, bus, store = api
    run_id = (await stub.StartRun(pb.StartRunRequest(config_yaml=GOOD), timeout=10)).run_id
    want = {}
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in store.get_bytes(keys.dataset_key(run_id, split)).splitlines()]
        want[split] = [r["id"] for r in rows]
        assert json.loads(store.get_bytes(keys.dataset_ids_key(run_id, split))) == want[split]
    assert len(want["train"]) == 10
    assert await Orchestrator(bus, store).split_ids(run_id) == {**want}
    # a run stored by a release without ids files: read from the datasets, line by line
    for split in want:
        store.delete(keys.dataset_ids_key(run_id, split))
    assert await Orchestrator(bus, store).split_ids(run_id) == {**want}


async def test_a_run_exists_before_its_first_job_is_out(api, nats_config):
    # A prepare job for a model imported before completes at once: its event must find the run.
    stub, bus, _ = api
    nc = await nats.connect(nats_config.url)
    found: list[bool] = []

    async def on_job(msg):
        run_id = msg.subject.rsplit(".", 1)[-1]
        found.append(await bus.runs.get(run_id) is not None)

    await nc.subscribe("restem.jobs.prepare.>", cb=on_job)
    await nc.flush()
    for i in range(3):
        config = GOOD.replace("name: api-run", f"name: api-run-{i}")
        await stub.StartRun(pb.StartRunRequest(config_yaml=config), timeout=10)
    for _ in range(100):
        if len(found) == 3:
            break
        await asyncio.sleep(0.02)
    await nc.close()
    assert found == [True, True, True]
