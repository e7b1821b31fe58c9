"""The files a run config names, sent from the user's machine to the coordinator's store.

`restem run` uploads every local file of `task.files` and `evaluation.transfer` (streamed, in 1 MiB
chunks) and sends the config with each path replaced by the file's content name `sha256:<hex>`.
Content the store already holds is not sent again (StatFile), so a second run with the same files
uploads nothing. A config that names no local file is sent unchanged, comments included.

The base model goes the same way when `model.base` is a local directory or `.gguf` file: each of
its files, then a manifest naming them (`shared.model_files`); the config names the model
`sha256:<manifest hex>`. An interrupted model upload resumes: stored files are not sent again.

NOT here: `builtin:` datasets and models (the services have them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.digest import CHUNK, file_digest

SCHEMES = ("builtin:", "sha256:", "s3://")


def _places(data: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(mapping, key) of every file a parsed run config names."""
    files = (data.get("task") or {}).get("files")
    places = [(files, k) for k in files] if isinstance(files, dict) else []
    transfer = (data.get("evaluation") or {}).get("transfer")
    places += [(t, "file") for t in transfer if isinstance(t, dict)] if isinstance(transfer, list) else []
    return [(d, k) for d, k in places if isinstance(d.get(k), str)]


def file_places(data: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(mapping, key) of every local file path in a parsed run config."""
    return [(d, k) for d, k in _places(data) if not d[k].startswith(SCHEMES)]


def names_stored_files(config_yaml: str) -> bool:
    """Whether the config names a file in a store (`sha256:` or `s3://`), which only the coordinator reads."""
    import yaml

    data = yaml.safe_load(config_yaml)
    stored = ("sha256:", "s3://")
    return isinstance(data, dict) and any(d[k].startswith(stored) for d, k in _places(data))


def chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            yield block


def upload_files(
    config_yaml: str, client: Any, say: Callable[[str], None] = print
) -> tuple[str, dict[str, str]]:
    """The config to send (local paths replaced by content names) and {content name: local path}.

    Relative paths are read from this shell's directory, as `restem run` validated them.
    """
    import yaml

    data = yaml.safe_load(config_yaml)
    places = file_places(data) if isinstance(data, dict) else []
    model = _local_model(data)
    if not places and model is None:
        return config_yaml, {}
    names: dict[str, str] = {}
    for mapping, key in places:
        path = Path(mapping[key]).expanduser()
        name = _put(client, path, say)
        names[name] = str(path)
        mapping[key] = name
    if model is not None:
        name = _put_model(client, model, say)
        names[name] = str(model)
        data["model"]["base"] = name
    return yaml.safe_dump(data, sort_keys=False), names


def _put(client: Any, path: Path, say: Callable[[str], None], quiet: bool = False) -> str:
    """Upload `path` unless the store has its content; its content name."""
    digest, size = file_digest(path)
    name = f"sha256:{digest}"
    if client.stat_file(digest).exists:
        if not quiet:
            say(f"{path}: already stored as {name}")
    else:
        client.upload_file(path, digest, size)
        say(f"{path}: uploaded ({size / 1e6:.1f} MB) as {name}")
    return name


def _local_model(data: Any) -> Path | None:
    base = (data.get("model") or {}).get("base") if isinstance(data, dict) else None
    from shared.models import hub_id

    if not isinstance(base, str) or base.startswith(SCHEMES) or hub_id(base) is not None:
        return None
    return Path(base).expanduser()


def _put_model(client: Any, source: Path, say: Callable[[str], None]) -> str:
    """Upload the model's files, then its manifest; the manifest's content name."""
    import tempfile

    from shared.model_files import manifest_for, model_files

    files = model_files(source)
    digests = {
        rel: _put(client, path, say, quiet=True).removeprefix("sha256:") for rel, path in files.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.json"
        manifest.write_bytes(manifest_for(source, digests))
        name = _put(client, manifest, lambda _: None)
    say(f"{source}: model of {len(files)} files stored as {name}")
    return name
