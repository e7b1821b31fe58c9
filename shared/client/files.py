"""The files a run config names, sent from the user's machine to the coordinator's store.

`restem run` uploads every local file of `task.files` and `evaluation.transfer` (streamed, in 1 MiB
chunks) and sends the config with each path replaced by the file's content name `sha256:<hex>`.
Content the store already holds is not sent again (StatFile), so a second run with the same files
uploads nothing. A config that names no local file is sent unchanged, comments included.

NOT here: `builtin:` datasets (the coordinator has them), model directories.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
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


def sha256_of(path: Path) -> tuple[str, int]:
    """The file's sha256 (hex) and size, read in chunks."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            size += len(block)
    return sha.hexdigest(), size


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
    if not places:
        return config_yaml, {}
    names: dict[str, str] = {}
    for mapping, key in places:
        path = Path(mapping[key]).expanduser()
        digest, size = sha256_of(path)
        name = f"sha256:{digest}"
        if name not in names:
            if client.stat_file(digest).exists:
                say(f"{path}: already stored as {name}")
            else:
                client.upload_file(path, digest, size)
                say(f"{path}: uploaded ({size / 1e6:.1f} MB) as {name}")
        names[name] = str(path)
        mapping[key] = name
    return yaml.safe_dump(data, sort_keys=False), names
