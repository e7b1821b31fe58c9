"""LocalStore and the store helpers shared by both implementations (no server needed)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import BinaryIO

import pytest
import urllib3
from minio.error import S3Error, ServerError

from shared.infra import StoreConfig
from shared.store import (
    LOCAL_MANIFEST_NAME,
    MANIFEST_NAME,
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactStore,
    LocalStore,
    classify_s3_error,
    open_store,
    validate_key,
)
from shared.store import local as store_mod


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make_src(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"a": 1}',
        "model.safetensors": os.urandom(200_000),
        "tokenizer/vocab.txt": b"a\nb\n",
        "tokenizer/deep/empty.bin": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


# --- single objects ---------------------------------------------------------------------------


def test_bytes_round_trip_and_overwrite(store: LocalStore) -> None:
    store.put_bytes("runs/r1/data.bin", b"one")
    assert store.get_bytes("runs/r1/data.bin") == b"one"
    store.put_bytes("runs/r1/data.bin", b"two, longer")
    assert store.get_bytes("runs/r1/data.bin") == b"two, longer"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""


def test_files_live_under_root_and_are_read_only(store: LocalStore) -> None:
    store.put_bytes("a/b/c.txt", b"x")
    path = store.root / "a" / "b" / "c.txt"
    assert path.read_bytes() == b"x"
    # Read-only because get_dir may hard-link it into a work dir.
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.describe() == f"local:{store.root}"


def test_put_file_get_file(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    store.put_file("blobs/big.bin", src)
    dest = tmp_path / "out" / "nested" / "big.bin"
    store.get_file("blobs/big.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644  # a plain copy, not the store's read-only file
    assert [p.name for p in dest.parent.iterdir()] == ["big.bin"]  # no temp file left beside it
    with pytest.raises(ArtifactNotFound):
        store.get_file("blobs/nope.bin", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_exists_and_delete(store: LocalStore) -> None:
    assert not store.exists("k")
    store.put_bytes("k", b"v")
    assert store.exists("k")
    store.delete("k")
    assert not store.exists("k")
    store.delete("k")  # absent: no error
    store.put_bytes("dir/k", b"v")
    assert not store.exists("dir")  # a directory is not an artifact
    store.delete("dir")  # ... so deleting it is deleting an absent key
    store.delete("dir/k/deeper")
    assert store.get_bytes("dir/k") == b"v"


def test_delete_prunes_emptied_directories_only(store: LocalStore) -> None:
    _make_src(store.root.parent / "src1")
    store.put_dir("run/out-state/step-00000001", store.root.parent / "src1")
    store.put_bytes("run/keep.txt", b"k")
    for key in store.list("run/out-state/"):
        store.delete(key)
    assert not (store.root / "run" / "out-state").exists()  # no empty directories left behind
    assert (store.root / "run").is_dir() and store.get_bytes("run/keep.txt") == b"k"
    store.delete("run/keep.txt")
    assert not (store.root / "run").exists() and store.root.is_dir()  # never the root itself
    store.put_bytes("run/out-state/step-00000002/x", b"again")  # the pruned path can be written again
    assert store.get_bytes("run/out-state/step-00000002/x") == b"again"


def test_list_is_sorted_recursive_and_a_string_prefix(store: LocalStore) -> None:
    for key in ["b/2", "a/x/1", "a/1", "ab", "a/x/y/z", "c"]:
        store.put_bytes(key, b".")
    assert store.list("") == ["a/1", "a/x/1", "a/x/y/z", "ab", "b/2", "c"]
    assert store.list("a/") == ["a/1", "a/x/1", "a/x/y/z"]
    assert store.list("a") == ["a/1", "a/x/1", "a/x/y/z", "ab"]  # like S3: not segment-based
    assert store.list("a/x/") == ["a/x/1", "a/x/y/z"]
    assert store.list("a/x/y/z") == ["a/x/y/z"]
    assert store.list("zzz/") == []
    assert store.list("a/x/q") == []


def test_missing_key_raises_artifact_not_found_naming_key_and_store(store: LocalStore) -> None:
    with pytest.raises(ArtifactNotFound) as info:
        store.get_bytes("runs/r9/missing.json")
    assert isinstance(info.value, KeyError)
    assert info.value.key == "runs/r9/missing.json"
    message = str(info.value)
    assert "'runs/r9/missing.json'" in message
    assert store.describe() in message


def test_key_clash_between_file_and_directory_is_a_clear_error(store: LocalStore) -> None:
    store.put_bytes("a", b"file")
    with pytest.raises(ValueError, match="clashes with an existing key"):
        store.put_bytes("a/b", b"x")
    store.put_bytes("d/e", b"x")
    with pytest.raises(ValueError, match="clashes with an existing key"):
        store.put_bytes("d", b"x")
    assert store.list("") == ["a", "d/e"]


# --- atomicity ----------------------------------------------------------------------------------


def test_failed_write_keeps_old_value_and_leaves_no_temp_file(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_bytes("state.json", b"old")

    def boom(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(store_mod.os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        store.put_bytes("state.json", b"new")
    monkeypatch.undo()
    assert store.get_bytes("state.json") == b"old"
    assert os.listdir(store.root) == ["state.json"]


def test_interrupted_write_mid_stream_keeps_old_value(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_bytes("f.bin", b"old")
    src = tmp_path / "src"
    src.write_bytes(b"new content")

    def half_copy(fsrc: BinaryIO, fdst: BinaryIO, length: int = 0) -> None:
        fdst.write(fsrc.read(4))
        raise KeyboardInterrupt  # like a Ctrl-C halfway through the copy

    monkeypatch.setattr(store_mod.shutil, "copyfileobj", half_copy)
    with pytest.raises(KeyboardInterrupt):
        store.put_file("f.bin", src)
    monkeypatch.undo()
    assert store.get_bytes("f.bin") == b"old"
    assert os.listdir(store.root) == ["f.bin"]


def test_temp_files_of_a_killed_writer_never_show_in_list(store: LocalStore) -> None:
    store.put_bytes("a/real", b"x")
    (store.root / "a" / ".restem-tmp-abc123").write_bytes(b"half")
    (store.root / ".restem-tmp-dir-x").mkdir()
    (store.root / ".restem-tmp-dir-x" / "file").write_bytes(b"half")
    assert store.list("") == ["a/real"]
    assert store.list("a/") == ["a/real"]


# --- key validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("../x", "'..' segment"),
        ("a/../../etc/passwd", "'..' segment"),
        ("/abs", "leading '/'"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a/./b", "'.' segment"),
        ("a\\b", "backslash"),
        ("", "empty"),
        ("a\nb", "non-printable"),
        ("x" * 1025, "at most 1024"),
        ("a/.restem-tmp-1", "reserved"),
    ],
)
def test_bad_keys_are_rejected_with_the_reason(store: LocalStore, key: str, problem: str) -> None:
    with pytest.raises(ValueError, match="invalid artifact key") as info:
        validate_key(key)
    assert problem in str(info.value)
    for call in (lambda: store.put_bytes(key, b"x"), lambda: store.get_bytes(key), lambda: store.exists(key)):
        with pytest.raises(ValueError, match=re.escape(problem)):
            call()


def test_traversal_writes_nothing_outside_root(store: LocalStore, tmp_path: Path) -> None:
    for key in ("../escape", "/tmp/escape", "a/../../escape"):
        with pytest.raises(ValueError):
            store.put_bytes(key, b"x")
    with pytest.raises(ValueError, match="invalid artifact prefix"):
        store.list("../")
    assert not (tmp_path / "escape").exists()
    assert store.list("") == []


def test_good_keys_pass() -> None:
    for key in ("a", "runs/r1/iter-0003/samples.jsonl", "x" * 1024, "with space/é", ".hidden/x"):
        assert validate_key(key) == key


# --- directory artifacts ------------------------------------------------------------------------


def test_put_dir_get_dir_round_trip(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    files = _make_src(src)
    assert not store.dir_exists("ckpts/c1")
    manifest = store.put_dir("ckpts/c1", src)
    assert store.dir_exists("ckpts/c1")
    assert manifest["files"] == {
        rel: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for rel, data in files.items()
    }
    assert "created" in manifest
    assert json.loads(store.get_bytes(f"ckpts/c1/{MANIFEST_NAME}")) == manifest
    assert store.list("ckpts/c1/") == sorted([f"ckpts/c1/{r}" for r in files] + [f"ckpts/c1/{MANIFEST_NAME}"])

    dest = tmp_path / "work" / "c1"
    assert store.get_dir("ckpts/c1", dest) == manifest
    got = _tree(dest)
    assert json.loads(got.pop(LOCAL_MANIFEST_NAME)) == manifest
    assert got == files
    assert [p.name for p in dest.parent.iterdir()] == ["c1"]  # the temp dir is gone


def test_get_dir_hard_links_on_the_same_filesystem(store: LocalStore, tmp_path: Path) -> None:
    _make_src(tmp_path / "src")
    store.put_dir("c", tmp_path / "src")
    store.get_dir("c", tmp_path / "dest")
    stored = store.root / "c" / "model.safetensors"
    assert (tmp_path / "dest" / "model.safetensors").stat().st_ino == stored.stat().st_ino


def test_manifest_is_written_last(store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_src(tmp_path / "src")
    order: list[str] = []
    real_put_file, real_put_bytes = store.put_file, store.put_bytes

    def put_file(key: str, path: Path) -> None:
        order.append(key)
        real_put_file(key, path)

    def put_bytes(key: str, data: bytes) -> None:
        order.append(key)
        real_put_bytes(key, data)

    monkeypatch.setattr(store, "put_file", put_file)
    monkeypatch.setattr(store, "put_bytes", put_bytes)
    store.put_dir("c", tmp_path / "src")
    assert order[-1] == f"c/{MANIFEST_NAME}"
    assert len(order) == 5


def test_upload_failing_midway_leaves_no_committed_artifact(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_src(tmp_path / "src")
    real_put_file = store.put_file

    def flaky(key: str, path: Path) -> None:
        if key.endswith("vocab.txt"):
            raise OSError("disk full")
        real_put_file(key, path)

    monkeypatch.setattr(store, "put_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        store.put_dir("c", tmp_path / "src")
    assert not store.dir_exists("c")
    with pytest.raises(ArtifactNotFound):
        store.get_dir("c", tmp_path / "dest")


def test_get_dir_detects_corruption(store: LocalStore, tmp_path: Path) -> None:
    _make_src(tmp_path / "src")
    store.put_dir("c", tmp_path / "src")
    stored = store.root / "c" / "tokenizer" / "vocab.txt"
    stored.chmod(0o644)
    stored.write_bytes(b"a\nX\n")  # same size, other content
    dest = tmp_path / "work" / "c"
    with pytest.raises(
        ArtifactCorrupt,
        match=r"c/tokenizer/vocab\.txt does not match the manifest: sha256 [0-9a-f]{64}, expected",
    ):
        store.get_dir("c", dest)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # temp dir cleaned up
    stored.write_bytes(b"short")
    with pytest.raises(ArtifactCorrupt, match="size 5, expected 4"):
        store.get_dir("c", dest)


def test_get_dir_missing_file_in_store(store: LocalStore, tmp_path: Path) -> None:
    _make_src(tmp_path / "src")
    store.put_dir("c", tmp_path / "src")
    store.delete("c/config.json")
    with pytest.raises(ArtifactNotFound, match=r"c/config\.json"):
        store.get_dir("c", tmp_path / "dest")


def test_get_dir_cache_hit_downloads_nothing(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_src(tmp_path / "src")
    manifest = store.put_dir("c", tmp_path / "src")
    dest = tmp_path / "dest"
    store.get_dir("c", dest)

    def no_fetch(key: str, target: Path) -> None:
        raise AssertionError(f"cache hit expected, but fetched {key}")

    monkeypatch.setattr(store, "_fetch_file", no_fetch)
    assert store.get_dir("c", dest) == manifest
    # A new version of the artifact is not a cache hit.
    monkeypatch.undo()
    (tmp_path / "src" / "config.json").write_bytes(b'{"a": 2}')
    store.put_dir("c", tmp_path / "src")
    store.get_dir("c", dest)
    assert (dest / "config.json").read_bytes() == b'{"a": 2}'
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest", "src", "store"]  # old copy removed


def test_get_dir_replaces_a_damaged_cached_copy(store: LocalStore, tmp_path: Path) -> None:
    files = _make_src(tmp_path / "src")
    store.put_dir("c", tmp_path / "src")
    dest = tmp_path / "dest"
    store.get_dir("c", dest)
    (dest / "config.json").unlink()
    (dest / "config.json").write_bytes(b"truncated")  # size differs from the manifest
    store.get_dir("c", dest)
    assert (dest / "config.json").read_bytes() == files["config.json"]


def test_get_dir_of_missing_artifact(store: LocalStore, tmp_path: Path) -> None:
    store.put_bytes("c/only-a-file", b"x")  # files without a manifest are not a committed artifact
    with pytest.raises(ArtifactNotFound) as info:
        store.get_dir("c", tmp_path / "dest")
    assert MANIFEST_NAME in str(info.value)
    assert "'c'" in str(info.value)
    assert not (tmp_path / "dest").exists()


def test_get_dir_rejects_a_manifest_that_escapes_dest(store: LocalStore, tmp_path: Path) -> None:
    evil = {"files": {"../../evil": {"size": 1, "sha256": "0" * 64}}, "created": "now"}
    store.put_bytes(f"c/{MANIFEST_NAME}", json.dumps(evil).encode())
    with pytest.raises(ArtifactCorrupt, match="malformed"):
        store.get_dir("c", tmp_path / "w" / "dest")
    assert not (tmp_path / "evil").exists()


def test_put_dir_reserved_names(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_src(src)
    (src / MANIFEST_NAME).write_text("{}")
    with pytest.raises(ValueError, match="reserves"):
        store.put_dir("c", src)
    (src / MANIFEST_NAME).unlink()
    # A directory fetched by get_dir can be stored again: its cache marker is not uploaded.
    store.put_dir("c", src)
    store.get_dir("c", tmp_path / "fetched")
    manifest = store.put_dir("c2", tmp_path / "fetched")
    assert LOCAL_MANIFEST_NAME not in manifest["files"]
    with pytest.raises(NotADirectoryError):
        store.put_dir("c3", tmp_path / "nope")


def test_empty_directory_artifact(store: LocalStore, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert store.put_dir("e/", tmp_path / "empty")["files"] == {}
    assert store.dir_exists("e")
    store.get_dir("e", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCAL_MANIFEST_NAME]


# --- open_store and S3 error classification -------------------------------------------------------


def test_open_store_local(tmp_path: Path) -> None:
    store = open_store(StoreConfig(kind="local", root=tmp_path / "s"))
    assert isinstance(store, LocalStore)
    assert isinstance(store, ArtifactStore)
    assert (tmp_path / "s").is_dir()


def _s3_error(code: str, status: int) -> S3Error:
    return S3Error(SimpleNamespace(status=status), code, "msg", "/b/k", "req", "host")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_s3_error("NoSuchKey", 404), "not_found"),
        (_s3_error("NoSuchBucket", 404), "not_found"),
        (_s3_error("AccessDenied", 403), "auth"),
        (_s3_error("SignatureDoesNotMatch", 403), "auth"),
        (_s3_error("InvalidAccessKeyId", 403), "auth"),
        (_s3_error("InternalError", 500), "transient"),
        (_s3_error("SlowDown", 503), "transient"),
        (_s3_error("InvalidArgument", 400), "other"),
        (ServerError("bad gateway", 502), "transient"),
        (urllib3.exceptions.NewConnectionError(None, "refused"), "transient"),  # type: ignore[arg-type]
        (urllib3.exceptions.ProtocolError("reset"), "transient"),
        (ConnectionResetError(), "transient"),
        (FileNotFoundError("local file"), "other"),
        (ValueError("bad"), "other"),
    ],
)
def test_classify_s3_error(exc: BaseException, kind: str) -> None:
    assert classify_s3_error(exc) == kind
