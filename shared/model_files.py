"""A base model sent from the user's machine: its files in the store, named by a manifest.

`restem run` uploads every file of a local Hugging Face directory (or a `.gguf` file) like a
dataset, once per content (`files/sha256/<hex>`), then a manifest listing them, and names the
model `sha256:<manifest hex>`. An interrupted upload goes on where it stopped: files already stored
are not sent again. The imported checkpoint's key comes from the manifest's hash, so the same
model is imported once and shared by every run that names it. The trainer's prepare job fetches
the files back into a directory and imports from there.

A model already in an object store is named `s3://bucket/prefix/` (a Hugging Face directory) or
`s3://bucket/key.gguf`; the coordinator and the trainer read it with their own S3 endpoint and
credentials, and the imported checkpoint's key comes from the objects' keys, sizes and ETags, so a
changed model is imported again and an unchanged one never.

NOT here: the upload itself (`shared.client.files`, `RunService.UploadFile`), Hub ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from shared.models import ModelNotFound

FORMAT = "restem-model/1"
PREFIX = "files/sha256/"
_HEX = re.compile(r"[0-9a-f]{64}")


def manifest_for(source: Path, digests: dict[str, str]) -> bytes:
    """The manifest of a model directory or .gguf file whose files have these sha256 digests."""
    name = source.stem if source.is_file() else source.name
    doc = {"format": FORMAT, "name": name, "gguf": source.is_file(), "files": dict(sorted(digests.items()))}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def model_files(source: Path) -> dict[str, Path]:
    """{name in the manifest: local file} of a model directory (every file under it) or a .gguf file."""
    if source.is_file():
        return {source.name: source}
    return {str(p.relative_to(source)): p for p in sorted(source.rglob("*")) if p.is_file()}


def parse_manifest(name: str, data: bytes) -> dict[str, Any]:
    """The manifest stored as `name` (`sha256:<hex>`), checked; ModelNotFound says what is wrong."""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    files = doc.get("files") if isinstance(doc, dict) and doc.get("format") == FORMAT else None
    if not isinstance(files, dict) or not files:
        raise ModelNotFound(f"model.base: {name} is not a model manifest (`restem run` writes one)")
    bad = [
        f
        for f, d in files.items()
        if not isinstance(d, str) or not _HEX.fullmatch(d) or ".." in Path(f).parts
    ]
    if bad or Path(next(iter(files))).is_absolute():
        raise ModelNotFound(f"model.base: {name} lists unusable files: {bad[:3]}")
    gguf = [f for f in files if f.endswith(".gguf")]
    if doc.get("gguf") is True and len(gguf) == 1:
        return doc
    if doc.get("gguf") is not False or "config.json" not in files:
        raise ModelNotFound(f"model.base: {name} is neither one .gguf file nor a directory with config.json")
    return doc


def store_key(name: str, manifest: dict[str, Any]) -> str:
    """Store prefix of the imported checkpoint: `models/<name>-<first 16 hex of the manifest>`."""
    stem = re.sub(r"[^a-z0-9-]+", "-", str(manifest["name"]).lower()).strip("-")[:48] or "model"
    return f"models/{stem}-{name.removeprefix('sha256:')[:16]}"


def missing_files(manifest: dict[str, Any], exists: Any) -> list[str]:
    """The manifest's files the store lacks (`exists`: the store's key check)."""
    return [f for f, digest in manifest["files"].items() if not exists(PREFIX + digest)]


def fetch(manifest: dict[str, Any], get_file: Any, dest: Path) -> Path:
    """Put the model's files under `dest` (`get_file(key, path)`: the store's); the path to import."""
    for rel, digest in manifest["files"].items():
        target = dest / rel
        if not target.is_file():
            get_file(PREFIX + digest, target)
    if manifest["gguf"]:
        return dest / next(f for f in manifest["files"] if f.endswith(".gguf"))
    return dest


def s3_model(uri: str, store_config: Any) -> tuple[Any, str, list[tuple[str, int, str]]]:
    """(the bucket's store, the key prefix, the model's objects) of `s3://bucket/prefix/`; ModelNotFound
    when the bucket, the prefix's config.json or the .gguf object is missing."""
    from shared.store import ArtifactNotFound
    from shared.store.s3 import S3Store

    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.*)", uri)
    if match is None:
        raise ModelNotFound(f"model.base: {uri} is not an s3://bucket/prefix/ URI")
    if store_config.kind != "s3":
        raise ModelNotFound(
            f"model.base: {uri} needs an S3 store (store.kind: s3) to be read with its credentials"
        )
    bucket, prefix = match.groups()
    try:
        source = S3Store(store_config.model_copy(update={"bucket": bucket}), create_bucket=False)
    except ArtifactNotFound:
        raise ModelNotFound(f"model.base: {uri}: bucket {bucket} does not exist") from None
    if prefix.endswith(".gguf"):
        objects = [o for o in source.listing(prefix) if o[0] == prefix]
    else:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        objects = source.listing(prefix)
        if not any(o[0] == f"{prefix}config.json" for o in objects):
            objects = []
    if not objects:
        raise ModelNotFound(
            f"model.base: {uri} holds neither a .gguf object nor a Hugging Face directory (config.json)"
        )
    return source, prefix, objects


def s3_store_key(uri: str, objects: list[tuple[str, int, str]]) -> str:
    """`models/<name>-<16 hex of the objects' keys, sizes and ETags>`."""
    import hashlib

    digest = hashlib.sha256(json.dumps([uri, sorted(objects)]).encode()).hexdigest()[:16]
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(uri.rstrip("/")).stem.lower()).strip("-")[:48] or "model"
    return f"models/{stem}-{digest}"


def fetch_s3(source: Any, prefix: str, objects: list[tuple[str, int, str]], dest: Path) -> Path:
    """Download the model's objects under `dest`; the path to import."""
    if prefix.endswith(".gguf"):
        source.get_file(prefix, dest / Path(prefix).name)
        return dest / Path(prefix).name
    for key, _, _ in objects:
        rel = key[len(prefix) :]
        if rel and ".." not in Path(rel).parts:
            source.get_file(key, dest / rel)
    return dest
