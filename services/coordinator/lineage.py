"""Lineage: where every checkpoint of a run came from, and whether its artifacts are still the bytes
that made it.

The chain of an iteration is base model -> sampling policy -> sample shards -> verdict shards
(checker versions) -> kept set -> M-step (settings, epoch kept) -> checkpoint. What the filter
read is recorded when it reads it (`record`: one JSON object per iteration, at the iteration's
`lineage_key`, with every shard's sha256), the checkpoint's manifest sha256 when the M-step reports
(`Iteration.checkpoint_sha256`). `build` assembles the document from the run record and those
records; `check` reads every artifact again and says what no longer matches.

A directory artifact (a model, a checkpoint) is named by the sha256 of its MANIFEST.json, which
holds each file's sha256, so `check` compares the manifest and then every file against it.

Not here: the run's state machine (core) and the filter itself (filter_io).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from restem.coordinator.v1 import coordinator_pb2 as pb

from shared import keys
from shared.digest import file_digest
from shared.runconfig import parse_run_config
from shared.store import ArtifactNotFound, ArtifactStore
from shared.store.base import MANIFEST_NAME

from .filter_io import FilterOutcome, ShardSource
from .jobs import train_params_for

LINEAGE_VERSION = 1


def manifest_sha256(store: ArtifactStore, prefix: str) -> str:
    """sha256 of a directory artifact's manifest; "" when there is none."""
    try:
        return hashlib.sha256(store.get_bytes(f"{prefix}/{MANIFEST_NAME}")).hexdigest()
    except ArtifactNotFound:
        return ""


def record(
    store: ArtifactStore, run: pb.Run, it: pb.Iteration, source: ShardSource, out: FilterOutcome
) -> str:
    """Write what the filter read and wrote for `it`; its key (idempotent: same inputs, same bytes)."""
    digests = out.digests or {}
    shards = range(len(digests))
    doc = {
        "lineage_version": LINEAGE_VERSION,
        "run_id": run.run_id,
        "iteration": it.iteration,
        "base_model": {"key": run.base_model_key, "sha256": manifest_sha256(store, run.base_model_key)},
        "policy": {"key": it.policy_key, "sha256": manifest_sha256(store, it.policy_key)},
        "samples": {
            "prefix": source.samples_prefix,
            "sha256": [digests[i].samples_sha256 for i in shards],
        },
        "verdicts": {
            "prefix": source.verdicts_prefix,
            "sha256": [digests[i].verdicts_sha256 for i in shards],
            "checkers": [list(digests[i].checkers) for i in shards],
        },
        "kept": {"key": it.kept_key, "sha256": out.kept_sha256},
    }
    key = f"{it.kept_key.rsplit('/', 1)[0]}/lineage.json"
    store.put_bytes(key, json.dumps(doc, indent=1, sort_keys=True).encode())
    return key


def _artifact(key: str, sha256: str, kind: str) -> dict[str, str]:
    return {"kind": kind, "key": key, "sha256": sha256}


def _m_step(run: pb.Run, it: pb.Iteration) -> dict[str, Any]:
    cfg = parse_run_config(run.config_yaml, source=f"run {run.run_id}")
    t = it.train
    return {
        "base_key": run.base_model_key,
        "kept_key": it.kept_key,
        "skipped": t.skipped,
        "settings": MessageToDict(train_params_for(cfg, it.iteration), preserving_proto_field_name=True),
        "epochs": t.epochs,
        "epoch_kept": t.best_epoch or t.epochs,
        "steps": t.steps,
        "examples": t.examples,
    }


def _iteration(store: ArtifactStore, run: pb.Run, it: pb.Iteration) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    if it.lineage_key:
        try:
            rec = json.loads(store.get_bytes(it.lineage_key))
        except ArtifactNotFound:
            rec = {"missing": it.lineage_key}
    checkers = sorted({c for shard in rec.get("verdicts", {}).get("checkers", []) for c in shard if c})
    owner = it.kept_key.split("/")[1] if it.kept_key.startswith("runs/") else run.run_id
    return {
        "iteration": it.iteration,
        "run_id": owner,
        "policy": rec.get("policy") or {"key": it.policy_key, "sha256": ""},
        "samples": rec.get("samples", {"prefix": it.samples_prefix, "sha256": []}),
        "verdicts": {
            **rec.get("verdicts", {"prefix": it.verdicts_prefix, "sha256": []}),
            "checker_versions": checkers,
        },
        "kept": {**(rec.get("kept") or {"key": it.kept_key, "sha256": it.kept_sha256}), "count": it.kept},
        "m_step": _m_step(run, it),
        "checkpoint": {"key": it.checkpoint_key, "sha256": it.checkpoint_sha256},
        "record_key": it.lineage_key,
        **({"record_missing": rec["missing"]} if "missing" in rec else {}),
        "base_model": rec.get("base_model"),
    }


def _replaced(store: ArtifactStore, run: pb.Run) -> dict[str, Any]:
    """The source's verdicts a fork's first own iteration re-filtered without (key and checkers)."""
    key = keys.lineage_key(run.forked_from, run.forked_at)
    try:
        rec = json.loads(store.get_bytes(key))
    except ArtifactNotFound:
        return {"record_key": key, "missing": True}
    checkers = sorted({c for shard in rec["verdicts"]["checkers"] for c in shard if c})
    return {"prefix": rec["verdicts"]["prefix"], "checker_versions": checkers, "record_key": key}


def build(store: ArtifactStore, run: pb.Run, iteration: int = 0) -> dict[str, Any]:
    """The lineage document of `run` (docs/provenance.md); `iteration` > 0: only the chain that
    made that iteration's checkpoint."""
    chain = [
        it for it in run.iterations if it.iteration > 0 and (iteration == 0 or it.iteration <= iteration)
    ]
    iterations = [_iteration(store, run, it) for it in chain]
    base = next((i["base_model"] for i in iterations if i.get("base_model")), None)
    for i in iterations:
        i.pop("base_model", None)
        if run.forked_from and i["iteration"] == run.forked_at:
            i["replaced_verdicts"] = _replaced(store, run)
    doc: dict[str, Any] = {
        "lineage_version": LINEAGE_VERSION,
        "run_id": run.run_id,
        "name": run.name,
        "task": run.task,
        "base_model": {"source": run.model_source, **(base or {"key": run.base_model_key, "sha256": ""})},
        "iterations": iterations,
        "checker_versions": sorted({c for i in iterations for c in i["verdicts"]["checker_versions"]}),
    }
    if run.forked_from:
        doc["forked_from"] = {
            "run_id": run.forked_from,
            "iteration": run.forked_at,
            "reverification": run.forked_reverification,
        }
    if run.sft_enabled and run.sft.checkpoint_key:
        doc["sft"] = {
            "train_set": run.sft.kept_key,
            "checkpoint": {"key": run.sft.checkpoint_key, "sha256": run.sft.checkpoint_sha256},
        }
    return doc


def artifacts(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """(what, artifact) for every artifact the document names with a recorded sha256."""
    yield "base model", _artifact(doc["base_model"]["key"], doc["base_model"]["sha256"], "dir")
    for i in doc["iterations"]:
        n = i["iteration"]
        for part in ("samples", "verdicts"):
            for shard, sha in enumerate(i[part].get("sha256", [])):
                yield (
                    f"iteration {n} {part} shard {shard}",
                    _artifact(keys.shard_key(i[part]["prefix"], shard), sha, "file"),
                )
        if i["kept"].get("sha256"):
            yield f"iteration {n} kept set", _artifact(i["kept"]["key"], i["kept"]["sha256"], "file")
        if i["checkpoint"]["sha256"]:
            yield (
                f"iteration {n} checkpoint",
                _artifact(i["checkpoint"]["key"], i["checkpoint"]["sha256"], "dir"),
            )
    if "sft" in doc and doc["sft"]["checkpoint"]["sha256"]:
        yield (
            "SFT checkpoint",
            _artifact(doc["sft"]["checkpoint"]["key"], doc["sft"]["checkpoint"]["sha256"], "dir"),
        )


def _file_sha256(store: ArtifactStore, key: str) -> str:
    # Through a temporary file: a checkpoint's weights are hundreds of megabytes.
    with tempfile.TemporaryDirectory(prefix="restem-lineage-") as tmp:
        path = Path(tmp) / "object"
        store.get_file(key, path)
        return file_digest(path)[0]


def _check_dir(store: ArtifactStore, what: str, art: dict[str, str]) -> list[str]:
    prefix = art["key"]
    try:
        raw = store.get_bytes(f"{prefix}/{MANIFEST_NAME}")
    except ArtifactNotFound:
        return [f"{what} ({prefix}): missing"]
    if hashlib.sha256(raw).hexdigest() != art["sha256"]:
        return [
            f"{what} ({prefix}): manifest sha256 {art['sha256'][:12]}... recorded, {hashlib.sha256(raw).hexdigest()[:12]}... now"
        ]
    out = []
    for rel, entry in sorted(json.loads(raw)["files"].items()):
        try:
            now = _file_sha256(store, f"{prefix}/{rel}")
        except ArtifactNotFound:
            out.append(f"{what} ({prefix}/{rel}): missing")
            continue
        if now != entry["sha256"]:
            out.append(
                f"{what} ({prefix}/{rel}): sha256 {entry['sha256'][:12]}... in the manifest, {now[:12]}... now"
            )
    return out


def check(store: ArtifactStore, doc: dict[str, Any]) -> tuple[list[str], int]:
    """(mismatches, artifacts checked): every artifact read again and hashed."""
    mismatches: list[str] = []
    checked = 0
    for what, art in artifacts(doc):
        if not art["sha256"]:
            continue
        checked += 1
        if art["kind"] == "dir":
            mismatches += _check_dir(store, what, art)
            continue
        try:
            now = hashlib.sha256(store.get_bytes(art["key"])).hexdigest()
        except ArtifactNotFound:
            mismatches.append(f"{what} ({art['key']}): missing")
            continue
        if now != art["sha256"]:
            mismatches.append(
                f"{what} ({art['key']}): sha256 {art['sha256'][:12]}... recorded, {now[:12]}... now"
            )
    for i in doc["iterations"]:
        if "record_missing" in i:
            mismatches.append(
                f"iteration {i['iteration']}: its lineage record {i['record_missing']} is missing"
            )
    return mismatches, checked
