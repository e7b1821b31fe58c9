"""The ArtifactStore contract, run against both implementations: LocalStore and S3Store on SeaweedFS.

Needs the `tests.fixtures.s3` plugin (the `s3_server` / `s3_store_config` fixtures).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import minio
import pytest
from pydantic import SecretStr

from shared.infra import StoreConfig
from shared.store import (
    LOCAL_MANIFEST_NAME,
    MANIFEST_NAME,
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactStore,
    S3Store,
    StoreAuthError,
    StoreUnavailable,
    open_store,
)
from tests.fixtures.s3 import S3Server, free_port

pytestmark = pytest.mark.integration

BIG = 20 * 1024 * 1024 + 123  # above one 16 MiB part: the multipart path on S3


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return open_store(StoreConfig(kind="local", root=tmp_path / "store"))
    return open_store(request.getfixturevalue("s3_store_config"))


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.bin"
    path.write_bytes(os.urandom(BIG))
    return path


def test_open_store_returns_the_right_kind(store: ArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)
    assert store.describe().startswith(("local:", "s3://127.0.0.1:"))


def test_bytes_round_trip_and_overwrite(store: ArtifactStore) -> None:
    store.put_bytes("runs/r1/state.json", b'{"step": 1}')
    assert store.get_bytes("runs/r1/state.json") == b'{"step": 1}'
    store.put_bytes("runs/r1/state.json", b'{"step": 2, "more": true}')
    assert store.get_bytes("runs/r1/state.json") == b'{"step": 2, "more": true}'
    store.put_bytes("runs/r1/empty", b"")
    assert store.get_bytes("runs/r1/empty") == b""
    blob = os.urandom(100_000)
    store.put_bytes("runs/r1/blob", blob)
    assert store.get_bytes("runs/r1/blob") == blob


def test_list_by_prefix(store: ArtifactStore) -> None:
    for key in ["runs/r2/b", "runs/r1/x/1", "runs/r1/a", "runs/r10/a", "other"]:
        store.put_bytes(key, b".")
    assert store.list("runs/r1/") == ["runs/r1/a", "runs/r1/x/1"]
    assert store.list("runs/r1") == ["runs/r1/a", "runs/r1/x/1", "runs/r10/a"]
    assert store.list("") == ["other", "runs/r1/a", "runs/r1/x/1", "runs/r10/a", "runs/r2/b"]
    assert store.list("nothing/") == []


def test_exists_and_delete(store: ArtifactStore) -> None:
    assert not store.exists("k/v")
    store.put_bytes("k/v", b"1")
    assert store.exists("k/v")
    assert not store.exists("k")  # a prefix is not an object
    store.delete("k/v")
    assert not store.exists("k/v")
    assert store.list("k/") == []
    store.delete("k/v")  # absent: no error
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("k/v")


def test_missing_key(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound) as info:
        store.get_bytes("no/such/key")
    assert "'no/such/key'" in str(info.value)
    assert store.describe() in str(info.value)
    with pytest.raises(ArtifactNotFound):
        store.get_file("no/such/key", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "store"])  # no temp file left


def test_bad_key_is_rejected_before_any_io(store: ArtifactStore) -> None:
    for key in ("../x", "/abs", "a//b"):
        with pytest.raises(ValueError, match="invalid artifact key"):
            store.put_bytes(key, b"x")
    assert store.list("") == []


def test_put_file_get_file_big(store: ArtifactStore, big_file: Path, tmp_path: Path) -> None:
    store.put_file("ckpt/model.bin", big_file)
    dest = tmp_path / "dl" / "model.bin"
    store.get_file("ckpt/model.bin", dest)
    assert dest.stat().st_size == BIG
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(big_file.read_bytes()).digest()
    assert [p.name for p in dest.parent.iterdir()] == ["model.bin"]  # no temp/part file left
    # get_file replaces an existing dest whole.
    store.put_bytes("ckpt/small", b"small")
    store.get_file("ckpt/small", dest)
    assert dest.read_bytes() == b"small"


def test_put_dir_get_dir(store: ArtifactStore, big_file: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"layers": 2}')
    (src / "sub" / "weights.bin").write_bytes(big_file.read_bytes())
    assert not store.dir_exists("ckpts/it1")
    manifest = store.put_dir("ckpts/it1", src)
    assert store.dir_exists("ckpts/it1")
    assert manifest["files"]["sub/weights.bin"] == {
        "size": BIG,
        "sha256": hashlib.sha256(big_file.read_bytes()).hexdigest(),
    }
    assert json.loads(store.get_bytes(f"ckpts/it1/{MANIFEST_NAME}")) == manifest

    dest = tmp_path / "work" / "it1"
    assert store.get_dir("ckpts/it1", dest) == manifest
    assert (dest / "config.json").read_text() == '{"layers": 2}'
    assert (dest / "sub" / "weights.bin").read_bytes() == big_file.read_bytes()
    assert json.loads((dest / LOCAL_MANIFEST_NAME).read_text()) == manifest
    assert [p.name for p in dest.parent.iterdir()] == ["it1"]

    # Second call: cache hit, even though the store's copy is now gone.
    store.delete("ckpts/it1/sub/weights.bin")
    assert store.get_dir("ckpts/it1", dest) == manifest


def test_get_dir_verifies_content(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello")
    store.put_dir("d", src)
    store.put_bytes("d/a.txt", b"HELLO")  # tampered after the commit
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        store.get_dir("d", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_get_dir_needs_the_manifest(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_bytes("half/file.bin", b"uploaded, never committed")
    assert not store.dir_exists("half")
    with pytest.raises(ArtifactNotFound, match=MANIFEST_NAME):
        store.get_dir("half", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# --- S3 only ------------------------------------------------------------------------------------


def _client(server: S3Server) -> minio.Minio:
    return minio.Minio(server.endpoint, server.access_key, server.secret_key, secure=False)


def test_s3_big_file_uses_multipart(
    s3_server: S3Server, s3_store_config: StoreConfig, big_file: Path
) -> None:
    store = open_store(s3_store_config)
    store.put_file("m/big.bin", big_file)
    stat = _client(s3_server).stat_object(s3_store_config.bucket, "m/big.bin")
    assert stat.size == BIG
    assert stat.etag is not None and stat.etag.endswith("-2")  # multipart ETag: "<md5>-<parts>"


def test_s3_bucket_is_created_and_reopening_is_fine(
    s3_server: S3Server, s3_store_config: StoreConfig
) -> None:
    assert not _client(s3_server).bucket_exists(s3_store_config.bucket)
    first = open_store(s3_store_config)
    assert _client(s3_server).bucket_exists(s3_store_config.bucket)
    first.put_bytes("k", b"v")
    assert open_store(s3_store_config).get_bytes("k") == b"v"  # bucket already there


def test_s3_concurrent_opens_of_a_new_bucket(s3_store_config: StoreConfig) -> None:
    # Several services start at once and all create the bucket: none may fail.
    with ThreadPoolExecutor(max_workers=6) as pool:
        stores = list(pool.map(lambda _: open_store(s3_store_config), range(6)))
    for i, store in enumerate(stores):
        store.put_bytes(f"from/{i}", b"x")
    assert stores[0].list("from/") == [f"from/{i}" for i in range(6)]


@pytest.mark.parametrize("which", ["secret", "access"])
def test_s3_wrong_credentials_give_a_clear_error(s3_server: S3Server, which: str) -> None:
    wrong = "not-the-secret-0123456789"
    if which == "secret":
        config = s3_server.config(secret_key=SecretStr(wrong))
    else:
        config = s3_server.config(access_key=SecretStr(wrong))
    started = time.monotonic()
    with pytest.raises(StoreAuthError) as info:
        open_store(config)
    assert time.monotonic() - started < 5  # auth failures are not retried
    message = str(info.value)
    assert "check the credentials" in message
    assert f"s3://{s3_server.endpoint}/{config.bucket}" in message
    everything = "".join(traceback.format_exception(info.value))  # with the chained minio error
    for secret in (wrong, s3_server.secret_key):
        assert secret not in everything


def test_s3_unreachable_endpoint_is_retried_then_reported(s3_server: S3Server) -> None:
    config = s3_server.config(endpoint=f"127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="after 3 tries") as info:
        S3Store(config, tries=3, backoff_s=0.05, max_backoff_s=0.1)
    assert time.monotonic() - started < 5
    assert s3_server.secret_key not in str(info.value)
