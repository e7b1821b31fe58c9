"""The streaming filter: the same kept set as the rule stated in `filtering.select_kept`, in any shard
order, with memory that does not grow with the number of samples."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from services.coordinator.filter_io import ShardFeed, ShardSource, add_shard, filter_iteration
from services.coordinator.selection import KeptSelection
from shared import keys
from shared.runconfig import parse_run_config
from shared.seeds import derive_seed
from shared.store import LocalStore
from shared.tasks import dumps_jsonl, loads_jsonl


def reference(
    samples: list[dict[str, Any]], correct: set[str], pids: list[str], cutoff: int, seed: int
) -> bytes:
    """The rule written the obvious way, everything in memory."""
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        if s["sample_id"] in correct:
            by_problem[s["problem_id"]].append(s)
    rows = []
    for pid in pids:
        seen: set[str] = set()
        unique = []
        for s in sorted(by_problem[pid], key=lambda s: (derive_seed(seed, s["sample_id"]), s["sample_id"])):
            text = " ".join(s["completion"].split())
            if text not in seen:
                seen.add(text)
                unique.append(s)
        rows += [
            {k: s[k] for k in ("sample_id", "problem_id", "prompt", "completion")} | {"weight": 1.0}
            for s in unique[:cutoff]
        ]
    return dumps_jsonl(rows)


def make_shards(rng: random.Random, problems: int, k: int, per_shard: int) -> list[list[dict[str, Any]]]:
    shards = []
    for first in range(0, problems, per_shard):
        rows = []
        for p in range(first, min(problems, first + per_shard)):
            for i in range(k):
                # few distinct texts, some differing only in spacing: duplicates are common
                text = f"answer {rng.randrange(6)}" + (" " * rng.randrange(3)) + " \\boxed{1}"
                rows.append(
                    {"sample_id": f"p{p}-{i}", "problem_id": f"p{p}", "prompt": f"Q{p}", "completion": text}
                )
        shards.append(rows)
    return shards


@pytest.mark.parametrize("cutoff", [0, 1, 3, 10])
def test_streaming_equals_the_rule_in_any_shard_order(cutoff: int) -> None:
    rng = random.Random(cutoff)
    shards = make_shards(rng, problems=40, k=16, per_shard=7)
    correct = {s["sample_id"] for shard in shards for s in shard if rng.random() < 0.6}
    pids = [f"p{p}" for p in range(40)] + ["never-sampled"]
    want = reference([s for shard in shards for s in shard], correct, pids, cutoff, seed=5)
    for order in (shards, shards[::-1], rng.sample(shards, len(shards))):
        with KeptSelection(pids, cutoff=cutoff, seed=5) as sel:
            for shard in order:
                sel.add_shard(shard, {s["sample_id"] for s in shard} & correct)
            out = io.BytesIO()
            sel.write_kept(out)
            stats = sel.stats()
        assert out.getvalue() == want
        assert stats.kept == len(loads_jsonl(want))
        assert stats.samples == 40 * 16 and stats.correct == len(correct)
        assert stats.problems_total == 41
    kept = loads_jsonl(want)
    if cutoff:
        # the test data must exercise the rule: duplicates dropped, the cap reached somewhere
        assert stats.duplicates_dropped > 0
        assert max(sum(1 for r in kept if r["problem_id"] == p) for p in pids) == min(cutoff, 6)


def test_samples_outside_the_split_count_but_are_never_kept() -> None:
    rows = [{"sample_id": "x-0", "problem_id": "x", "prompt": "Q", "completion": "a"}]
    with KeptSelection(["p"], cutoff=4, seed=0) as sel:
        sel.add_shard(rows, {"x-0"})
        out = io.BytesIO()
        assert sel.write_kept(out) == 0
        assert (sel.stats().samples, sel.stats().kept, sel.stats().problems_solved) == (1, 0, 0)
        assert sel.tallies()["x"].correct == 1


def _store_iteration(store: LocalStore, k: int, problems: int, per_shard: int) -> int:
    rng = random.Random(k)
    big = "x" * 2000  # MATH-sized: 2 KB prompts and completions
    shards = 0
    for first in range(0, problems, per_shard):
        samples, verdicts = [], []
        for p in range(first, min(problems, first + per_shard)):
            for i in range(k):
                sid = f"p{p}-{i}"
                samples.append(
                    {"sample_id": sid, "problem_id": f"p{p}", "prompt": big, "completion": f"{i} {big}"}
                )
                verdicts.append({"sample_id": sid, "problem_id": f"p{p}", "correct": rng.random() < 0.5})
        store.put_bytes(keys.samples_key("run-1", 1, shards), dumps_jsonl(samples))
        store.put_bytes(keys.verdicts_key("run-1", 1, shards), dumps_jsonl(verdicts))
        shards += 1
    return shards


def test_shards_whose_verdicts_do_not_line_up_are_read_by_id(tmp_path: Path) -> None:
    rows = [
        {"sample_id": f"p-{i}", "problem_id": "p", "prompt": "Q", "completion": f"c{i}"} for i in range(6)
    ]
    verdicts = [{"sample_id": f"p-{i}", "problem_id": "p", "correct": i % 2 == 0} for i in range(6)]
    kept = []
    for shuffled, old_release in ((verdicts, False), (verdicts[::-1], False), (verdicts, True)):
        judged = [{k: v for k, v in row.items() if k != "problem_id" or not old_release} for row in shuffled]
        with KeptSelection(["p"], cutoff=5, seed=3) as sel:
            add_shard(sel, dumps_jsonl(rows), dumps_jsonl(judged))
            out = io.BytesIO()
            sel.write_kept(out)
            assert (sel.stats().samples, sel.stats().correct) == (6, 3)
        kept.append(out.getvalue())
    assert kept[0] == kept[1] == kept[2]
    assert sorted(r["sample_id"] for r in loads_jsonl(kept[0])) == ["p-0", "p-2", "p-4"]


def _filter_peak(tmp_path: Path, k: int, per_shard: int) -> tuple[int, int]:
    store = LocalStore(tmp_path / f"store-{k}")
    problems = 200
    shards = _store_iteration(store, k, problems, per_shard)
    cfg = parse_run_config(json.dumps({"task": {"name": "arithmetic"}, "em": {"cutoff": 4}}), source="test")
    tracemalloc.start()
    out = filter_iteration(
        store,
        "run-1",
        1,
        shards=shards,
        rounds_done=1,
        cfg=cfg,
        problem_ids=[f"p{p}" for p in range(problems)],
    )
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.stats is not None and out.stats.samples == problems * k
    assert len(loads_jsonl(store.get_bytes(keys.kept_key("run-1", 1)))) == out.stats.kept
    return peak, problems * k * 4000


def test_filter_memory_does_not_grow_with_the_sample_count(tmp_path: Path) -> None:
    # 4x the samples per problem (same bytes per shard): the data grows 4x, the filter's memory must not.
    small, small_bytes = _filter_peak(tmp_path, k=8, per_shard=16)
    large, large_bytes = _filter_peak(tmp_path, k=32, per_shard=4)
    assert large_bytes == 4 * small_bytes
    assert large < small + 2_000_000, (small, large)
    assert large < large_bytes / 4, (large, large_bytes)


def test_shards_fed_while_verified_give_the_same_kept_set(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    shards = _store_iteration(store, k=8, problems=60, per_shard=8)
    cfg = parse_run_config(json.dumps({"task": {"name": "arithmetic"}, "em": {"cutoff": 4}}), source="test")
    ids = [f"p{p}" for p in range(60)]
    whole = filter_iteration(store, "run-1", 1, shards=shards, rounds_done=1, cfg=cfg, problem_ids=ids)
    want = store.get_bytes(keys.kept_key("run-1", 1))
    feed = ShardFeed(cfg, 1, ids, ShardSource.of_run("run-1", 1))
    for shard in (5, 0, 3, 3):  # some shards, out of order, one twice (a redelivered event)
        feed.feed(store, shard)
    assert feed.fed == {0, 3, 5}
    store.delete(keys.kept_key("run-1", 1))
    fed = filter_iteration(
        store, "run-1", 1, shards=shards, rounds_done=1, cfg=cfg, problem_ids=ids, feed=feed
    )
    assert store.get_bytes(keys.kept_key("run-1", 1)) == want
    assert fed.stats == whole.stats and feed.fed == set(range(shards))
    # The lineage's record of what was read is the same whichever way the shards came in.
    assert fed.digests == whole.digests and fed.kept_sha256 == whole.kept_sha256
    assert whole.digests is not None and len(whole.digests) == shards
    assert (
        whole.digests[2].samples_sha256
        == hashlib.sha256(store.get_bytes(keys.samples_key("run-1", 1, 2))).hexdigest()
    )
    assert whole.kept_sha256 == hashlib.sha256(want).hexdigest()
    feed.close()
    feed.feed(store, 1)  # a late feed after the filter: touches nothing
