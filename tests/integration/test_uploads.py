"""Datasets from the user's machine: uploaded through RunService into the store, once per content,
and read from there when a run starts (real gRPC, a real nats-server, a real store)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.coordinator.v1 import coordinator_pb2_grpc as pb_grpc

from services.coordinator.config import CoordinatorConfig
from services.coordinator.events import Orchestrator
from services.coordinator.grpc_api import RunApi
from shared import keys
from shared.bus import EventBus
from shared.client.client import RunClient
from shared.client.files import upload_files
from shared.grpc_server import ServiceBinding, serve
from shared.infra import GrpcConfig, StoreConfig
from shared.store import LocalStore, open_store
from tests.fixtures.s3 import LIMITED_ACCESS_KEY, LIMITED_BUCKET, LIMITED_SECRET_KEY, S3Server

pytestmark = pytest.mark.integration

CONFIG = """\
name: my-data
task:
  name: gsm8k
  files: {train: data/train.jsonl, validation: data/val.jsonl, test: data/test.jsonl.gz}
em: {iterations: 1, shard_size: 4}
"""


def _gsm8k(n: int, start: int = 0) -> bytes:
    rows = [
        {"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}
        for i in range(start, start + n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
async def coordinator(nats_config: Any, tmp_path: Path) -> AsyncIterator[tuple[str, LocalStore]]:
    async with _serving(nats_config, StoreConfig(root=tmp_path / "store"), tmp_path) as (address, store):
        yield address, store  # type: ignore[misc]


@contextlib.asynccontextmanager
async def _serving(
    nats_config: Any, store_config: StoreConfig, tmp_path: Path
) -> AsyncIterator[tuple[str, Any]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    port_file = tmp_path / "port"
    cfg = CoordinatorConfig(
        nats=nats_config,
        store=store_config,
        grpc=GrpcConfig(port_file=port_file, grace_s=0),
        max_upload_bytes=64 * 1024,
    )
    bus = await EventBus.connect(cfg.nats, name="test-coordinator")
    await bus.ensure_topology()
    store = open_store(store_config)
    stop = asyncio.Event()
    binding = ServiceBinding.of(pb_grpc, "RunService", RunApi(cfg, Orchestrator(bus, store)))
    server = asyncio.create_task(serve([binding], cfg.grpc, healthy=lambda: bus.connected, stop=stop))
    while not port_file.exists():
        if server.done():
            server.result()  # the server could not start: say why
        await asyncio.sleep(0.02)
    try:
        yield f"127.0.0.1:{port_file.read_text()}", store
    finally:
        stop.set()
        await server
        await bus.close()


def _client_files(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_bytes(_gsm8k(12))
    (root / "data" / "val.jsonl").write_bytes(_gsm8k(3, 100))
    (root / "data" / "test.jsonl.gz").write_bytes(gzip.compress(_gsm8k(5, 200)))
    return root


def _stored_files(store: LocalStore) -> list[str]:
    return store.list("files/")


async def test_a_run_reads_its_datasets_from_the_store_once_the_client_files_are_gone(
    coordinator: tuple[str, LocalStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address, store = coordinator
    client_dir = _client_files(tmp_path / "laptop")
    monkeypatch.chdir(client_dir)  # relative paths, as `restem run` reads them
    said: list[str] = []
    with RunClient(address) as client:
        sent, names = await asyncio.to_thread(upload_files, CONFIG, client, said.append)
        assert len(_stored_files(store)) == 3 and all("uploaded" in line for line in said)
        again, _ = await asyncio.to_thread(upload_files, CONFIG, client, said.append)
        assert again == sent and len(_stored_files(store)) == 3  # the same files: nothing uploaded
        assert all("already stored" in line for line in said[3:])
        for path in (client_dir / "data").iterdir():
            path.unlink()  # the run must not need the client's files
        run = await asyncio.to_thread(client.start_run, sent)
    stored = store.get_bytes(keys.config_key(run.run_id)).decode()
    assert stored == sent and sorted(names) == sorted(v for v in sent.split() if v.startswith("sha256:"))
    train = [json.loads(line) for line in store.get_bytes(keys.dataset_key(run.run_id, "train")).splitlines()]
    test = [json.loads(line) for line in store.get_bytes(keys.dataset_key(run.run_id, "test")).splitlines()]
    assert len(train) == 12 and len(test) == 5  # the gzipped file read by its content, not its name


def _upload(address: str, header: pb.FileHeader | None, body: list[bytes]) -> pb.UploadFileResponse:
    def parts() -> Any:
        if header is not None:
            yield pb.UploadFileRequest(header=header)
        for block in body:
            yield pb.UploadFileRequest(chunk=block)

    with RunClient(address) as client:
        return client.stub.UploadFile(parts(), timeout=30)


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("wrong checksum", grpc.StatusCode.INVALID_ARGUMENT, "nothing was stored"),
        ("interrupted", grpc.StatusCode.INVALID_ARGUMENT, "interrupted or changed"),
        ("no header", grpc.StatusCode.INVALID_ARGUMENT, "starts with a header"),
        ("bad sha256", grpc.StatusCode.INVALID_ARGUMENT, "64 lower-case hex digits"),
        ("too large", grpc.StatusCode.RESOURCE_EXHAUSTED, "max_upload_bytes"),
    ],
)
async def test_a_bad_upload_says_why_and_stores_nothing(
    coordinator: tuple[str, LocalStore], case: str, code: grpc.StatusCode, words: str
) -> None:
    address, store = coordinator
    data = _gsm8k(20)
    digest = hashlib.sha256(data).hexdigest()
    header, body = (
        pb.FileHeader(name="train.jsonl", sha256=digest, size=len(data)),
        [data[:1000], data[1000:]],
    )
    if case == "wrong checksum":
        header.sha256 = hashlib.sha256(b"other").hexdigest()
    elif case == "interrupted":
        body = body[:1]
    elif case == "no header":
        header = None
    elif case == "bad sha256":
        header.sha256 = "ABC"
    else:
        header.size = 10**9
    with pytest.raises(grpc.RpcError) as err:
        await asyncio.to_thread(_upload, address, header, body)
    assert err.value.code() == code and words in (err.value.details() or "")
    assert _stored_files(store) == []


async def test_start_run_names_a_missing_or_bad_uploaded_file(coordinator: tuple[str, LocalStore]) -> None:
    address, _ = coordinator
    absent = "sha256:" + "0" * 64
    bad = b'{"question": "q1", "answer": "#### 1"}\n{"question": "q2"}\n'
    digest = hashlib.sha256(bad).hexdigest()
    await asyncio.to_thread(
        _upload, address, pb.FileHeader(name="t.jsonl", sha256=digest, size=len(bad)), [bad]
    )
    with RunClient(address) as client:
        with pytest.raises(grpc.RpcError) as missing:
            await asyncio.to_thread(
                client.start_run, f"task: {{name: gsm8k, files: {{train: {absent}, test: {absent}}}}}"
            )
        with pytest.raises(grpc.RpcError) as broken:
            config = f"task: {{name: gsm8k, files: {{train: sha256:{digest}, test: sha256:{digest}}}}}"
            await asyncio.to_thread(client.start_run, config)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and absent in (missing.value.details() or "")
    details = broken.value.details() or ""
    assert broken.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"sha256:{digest}:2: each line needs" in details and "/tmp" not in details  # file:line


def _s3_config(s3: S3Server, bucket: str) -> str:
    return f"task: {{name: gsm8k, files: {{train: s3://{bucket}/gsm8k/train.jsonl, test: s3://{bucket}/gsm8k/test.jsonl}}}}"


async def test_s3_files_are_read_with_the_stores_credentials_and_errors_name_the_uri(
    nats_config: Any, s3_server: S3Server, tmp_path: Path
) -> None:
    data = s3_server.config(bucket=f"user-data-{tmp_path.name[-8:].lower().replace('_', '-')}")
    user = open_store(data)  # the user's own bucket, beside the coordinator's store
    user.put_bytes("gsm8k/train.jsonl", _gsm8k(8))
    user.put_bytes("gsm8k/test.jsonl", _gsm8k(4, 50))
    async with _serving(nats_config, s3_server.config(), tmp_path) as (address, store):
        with RunClient(address) as client:
            run = await asyncio.to_thread(client.start_run, _s3_config(s3_server, data.bucket))
            errors = []
            for config in (
                _s3_config(s3_server, data.bucket).replace("train.jsonl", "missing.jsonl"),
                _s3_config(s3_server, "no-such-bucket-x1"),
            ):
                with pytest.raises(grpc.RpcError) as err:
                    await asyncio.to_thread(client.start_run, config)
                errors.append((err.value.code(), err.value.details() or ""))
    train = store.get_bytes(keys.dataset_key(run.run_id, "train")).splitlines()
    assert len(train) == 8 and f"s3://{data.bucket}/gsm8k/train.jsonl" in run.config_yaml
    assert (
        errors[0][0] == grpc.StatusCode.NOT_FOUND
        and "gsm8k/missing.jsonl does not exist (no such object" in errors[0][1]
    )
    assert errors[1][0] == grpc.StatusCode.NOT_FOUND and "its bucket does not exist" in errors[1][1]
    limited = s3_server.config(
        bucket=LIMITED_BUCKET, access_key=LIMITED_ACCESS_KEY, secret_key=LIMITED_SECRET_KEY
    )
    async with _serving(nats_config, limited, tmp_path / "limited") as (address, _):
        with RunClient(address) as client, pytest.raises(grpc.RpcError) as denied:
            await asyncio.to_thread(client.start_run, _s3_config(s3_server, data.bucket))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"s3://{data.bucket}/gsm8k/train.jsonl" in (denied.value.details() or "")


async def test_start_run_names_a_stored_model_that_is_missing_or_incomplete(
    coordinator: tuple[str, LocalStore], tmp_path: Path
) -> None:
    from shared.model_files import manifest_for

    address, _ = coordinator
    model = tmp_path / "m"
    model.mkdir()
    manifest = manifest_for(model, {"config.json": "1" * 64, "model.safetensors": "2" * 64})
    digest = hashlib.sha256(manifest).hexdigest()
    header = pb.FileHeader(name="manifest.json", sha256=digest, size=len(manifest))
    await asyncio.to_thread(_upload, address, header, [manifest])
    errors = []
    with RunClient(address) as client:
        for base in ("sha256:" + "3" * 64, f"sha256:{digest}"):
            with pytest.raises(grpc.RpcError) as err:
                await asyncio.to_thread(client.start_run, f"model: {{base: '{base}'}}\n")
            errors.append((err.value.code(), err.value.details() or ""))
    assert errors[0][0] == grpc.StatusCode.NOT_FOUND and "is not in the store" in errors[0][1]
    assert errors[1][0] == grpc.StatusCode.NOT_FOUND and "lacks 2 files in the store" in errors[1][1]


async def test_a_model_in_an_object_store_is_checked_at_start_and_imported_by_the_trainer(
    nats_config: Any, s3_server: S3Server, tmp_path: Path
) -> None:
    from restem.events.v1 import events_pb2 as ev

    from services.trainer.events import PrepareHandler
    from shared.llm.checkpoint import save_checkpoint
    from tests.fixtures.models import smollm2_tokenizer, tiny_llama

    tokenizer = smollm2_tokenizer()
    save_checkpoint(tiny_llama(tokenizer), tokenizer, tmp_path / "tiny")
    user = open_store(s3_server.config(bucket=f"models-{tmp_path.name[-8:].lower().replace('_', '-')}"))
    user.put_dir("team/tiny", tmp_path / "tiny")
    uri = f"s3://{user.describe().rsplit('/', 1)[1]}/team/tiny/"
    store_config = s3_server.config()
    async with _serving(nats_config, store_config, tmp_path / "coordinator") as (address, store):
        with RunClient(address) as client:
            run = await asyncio.to_thread(client.start_run, f"model: {{base: '{uri}'}}\n")
            with pytest.raises(grpc.RpcError) as missing:
                await asyncio.to_thread(client.start_run, f"model: {{base: '{uri}nope/'}}\n")
        bus = await EventBus.connect(nats_config, name="test-trainer")
        try:
            handler = PrepareHandler(bus, store, tmp_path / "work", store_config=store_config)
            job = ev.PrepareJob(
                run_id=run.run_id, job_id="prepare-1", model_source=uri, model_key=run.base_model_key
            )
            await handler(job)
        finally:
            await bus.close()
    assert run.base_model_key.startswith("models/tiny-")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "neither a .gguf object" in (
        missing.value.details() or ""
    )
    assert store.dir_exists(run.base_model_key) and not (tmp_path / "work" / "uploaded-models").exists()


async def test_a_hub_model_starts_a_run_keyed_by_repository_and_revision(
    coordinator: tuple[str, LocalStore],
) -> None:
    from shared.models import hub_store_key

    address, _ = coordinator
    with RunClient(address) as client:
        run = await asyncio.to_thread(client.start_run, "model: {base: acme/tiny-llama@v1}\n")
    assert (
        run.base_model_key == hub_store_key("acme/tiny-llama", "v1")
        and run.model_source == "acme/tiny-llama@v1"
    )
