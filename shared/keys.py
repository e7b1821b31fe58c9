"""The object-store layout and the deterministic job ids, in one place.

Every artifact of a run lives under `runs/<run_id>/`, per-iteration artifacts under
`runs/<run_id>/iter-<n>/`; the run record's snapshot is `run-states/<run_id>.pb`. Keys and job ids are pure functions of (run, iteration, shard/split),
so a redelivered job rewrites the same object and a re-published job is deduplicated by NATS.
What outlives runs and is shared by them lives under `cache/` (the verifier's verdicts).
"""

from __future__ import annotations

import re

_RUN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
_CHECKER_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ValueError(f"invalid run id '{run_id}': expected lower-case letters, digits and dashes")
    return run_id


def run_prefix(run_id: str) -> str:
    return f"runs/{check_run_id(run_id)}"


def iter_prefix(run_id: str, iteration: int) -> str:
    return f"{run_prefix(run_id)}/iter-{iteration}"


def config_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}/config.yaml"


def dataset_key(run_id: str, split: str) -> str:
    return f"{run_prefix(run_id)}/data/{split}.jsonl"


def dataset_ids_key(run_id: str, split: str) -> str:
    """The split's problem ids in order (a JSON list): what the coordinator needs of a dataset."""
    return f"{run_prefix(run_id)}/data/{split}.ids.json"


def shard_key(prefix: str, shard: int) -> str:
    """A shard's object under a samples or verdicts prefix (an iteration records its prefixes)."""
    return f"{prefix}/shard-{shard:05d}.jsonl"


def samples_prefix(run_id: str, iteration: int) -> str:
    return f"{iter_prefix(run_id, iteration)}/samples"


def verdicts_prefix(run_id: str, iteration: int, reverification: int = 0) -> str:
    """The iteration's verdicts; those of the run's reverification `n` sit beside them."""
    tail = "verdicts" if reverification == 0 else f"reverify-{reverification}/verdicts"
    return f"{iter_prefix(run_id, iteration)}/{tail}"


def samples_key(run_id: str, iteration: int, shard: int) -> str:
    return shard_key(samples_prefix(run_id, iteration), shard)


def verdicts_key(run_id: str, iteration: int, shard: int) -> str:
    return shard_key(verdicts_prefix(run_id, iteration), shard)


def lineage_key(run_id: str, iteration: int) -> str:
    """What the filter read and wrote (every shard's sha256, the checkers, the kept set)."""
    return f"{iter_prefix(run_id, iteration)}/lineage.json"


def reverify_changes_key(run_id: str, reverification: int) -> str:
    return f"{run_prefix(run_id)}/reverify-{reverification}/changes.json"


def state_key(run_id: str) -> str:
    """The run record's latest snapshot, under one flat prefix so that recovery lists runs cheaply."""
    return f"{STATE_PREFIX}{check_run_id(run_id)}.pb"


STATE_PREFIX = "run-states/"


def kept_key(run_id: str, iteration: int) -> str:
    return f"{iter_prefix(run_id, iteration)}/kept.jsonl"


def checkpoint_key(run_id: str, iteration: int) -> str:
    return f"{iter_prefix(run_id, iteration)}/checkpoint"


def eval_key(run_id: str, iteration: int, split: str) -> str:
    return f"{iter_prefix(run_id, iteration)}/eval/{split}.jsonl"


def sft_prefix(run_id: str) -> str:
    """The SFT baseline's artifacts: train.jsonl, checkpoint/, eval/<split>.jsonl."""
    return f"{run_prefix(run_id)}/sft"


def report_key(run_id: str, name: str = "report.json") -> str:
    return f"{run_prefix(run_id)}/report/{name}"


def job_id(kind: str, run_id: str, iteration: int | None = None, part: str | int | None = None) -> str:
    """Deterministic id of a job; also its Nats-Msg-Id."""
    pieces = [kind, run_id]
    if iteration is not None:
        pieces.append(f"i{iteration}")
    if part is not None:
        pieces.append(str(part))
    return ".".join(pieces)


def verdict_cache_key(checker: str, version: str, problem_fp: str, completion_sha256: str) -> str:
    """One cached verdict: `cache/verdicts/<checker>/<version>/<fp[:2]>/<fp>/<completion sha256>.json`.

    Content-addressed and shared by every verifier replica and every run: the same completion of
    the same problem, judged by the same checker version, is the same object. A version bump
    starts an empty tree beside the old one (nothing is overwritten); `<fp[:2]>` spreads problems
    over 256 prefixes, which S3 partitions by and a local store keeps as small directories.
    """
    for name, value, pattern in (
        ("checker", checker, _CHECKER_NAME),
        ("version", version, _CHECKER_NAME),
        ("problem_fp", problem_fp, _SHA256),
        ("completion_sha256", completion_sha256, _SHA256),
    ):
        if not pattern.match(value):
            raise ValueError(f"invalid verdict cache {name} {value!r}: expected {pattern.pattern}")
    return f"cache/verdicts/{checker}/{version}/{problem_fp[:2]}/{problem_fp}/{completion_sha256}.json"
