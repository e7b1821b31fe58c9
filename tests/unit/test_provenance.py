"""Provenance without services: the lineage document and its check over a stored iteration,
reverification's bookkeeping and changes, what a fork may change and the record it starts from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from services.coordinator import fork, lineage, reverify
from services.coordinator.filter_io import ShardSource, filter_iteration
from shared import keys
from shared.runconfig import parse_run_config
from shared.store import LocalStore
from shared.tasks import dumps_jsonl, loads_jsonl

RUN = "prov-1"
CONFIG = json.dumps({"task": {"name": "arithmetic"}, "em": {"cutoff": 2, "iterations": 1}})
IDS = [f"p{p}" for p in range(4)]


def _verdicts(correct: set[str], version: str, samples: list[dict]) -> list[dict]:
    return [
        {"sample_id": s["sample_id"], "problem_id": s["problem_id"], "correct": s["sample_id"] in correct,
         "rule": "answer-is", "checker_version": version}
        for s in samples
    ]  # fmt: skip


def _samples(shard: int) -> list[dict]:
    return [
        {"sample_id": f"i1/{p}/{i}", "problem_id": p, "prompt": f"Q {p}", "completion": f"{p} answer {i}",
         "policy_key": "models/base"}
        for p in IDS[2 * shard : 2 * shard + 2]
        for i in range(3)
    ]  # fmt: skip


CORRECT = {"i1/p0/0", "i1/p0/1", "i1/p1/2", "i1/p2/0", "i1/p3/1"}


@pytest.fixture
def stored(tmp_path: Path) -> tuple[LocalStore, pb.Run]:
    """A finished one-iteration run whose filter recorded its lineage, as the coordinator does."""
    store = LocalStore(tmp_path / "store")
    for name, data in (("config.json", b"{}"), ("model.safetensors", b"weights")):
        (tmp_path / "base").mkdir(exist_ok=True)
        (tmp_path / "base" / name).write_bytes(data)
    store.put_dir("models/base", tmp_path / "base")
    for shard in range(2):
        store.put_bytes(keys.samples_key(RUN, 1, shard), dumps_jsonl(_samples(shard)))
        store.put_bytes(
            keys.verdicts_key(RUN, 1, shard), dumps_jsonl(_verdicts(CORRECT, "numeric-1", _samples(shard)))
        )
    cfg = parse_run_config(CONFIG, source="test")
    run = pb.Run(run_id=RUN, name=RUN, task="arithmetic", status=pb.RUN_STATUS_SUCCEEDED, config_yaml=CONFIG,
                 base_model_key="models/base", model_source="builtin:test")  # fmt: skip
    run.iterations.add(iteration=0, checkpoint_key="models/base", policy_key="models/base")
    it = run.iterations.add(
        iteration=1, policy_key="models/base", shards_total=2, samples=12, correct_samples=len(CORRECT),
        samples_prefix=keys.samples_prefix(RUN, 1), verdicts_prefix=keys.verdicts_prefix(RUN, 1),
        kept_key=keys.kept_key(RUN, 1),
    )  # fmt: skip
    it.shards_sampled.extend([0, 1])
    it.shards_verified.extend([0, 1])
    out = filter_iteration(store, RUN, 1, shards=2, rounds_done=0, cfg=cfg, problem_ids=IDS)
    assert out.stats is not None
    it.kept, it.kept_sha256 = out.stats.kept, out.kept_sha256
    it.lineage_key = lineage.record(store, run, it, ShardSource.of_run(RUN, 1), out)
    store.put_dir(keys.checkpoint_key(RUN, 1), tmp_path / "base")
    it.checkpoint_key = keys.checkpoint_key(RUN, 1)
    it.checkpoint_sha256 = lineage.manifest_sha256(store, it.checkpoint_key)
    return store, run


def test_the_lineage_names_every_artifact_with_its_recorded_sha256(stored: tuple[LocalStore, pb.Run]) -> None:
    store, run = stored
    doc = lineage.build(store, run)
    (i1,) = doc["iterations"]
    manifest = hashlib.sha256(store.get_bytes("models/base/MANIFEST.json")).hexdigest()
    assert doc["base_model"] == {"source": "builtin:test", "key": "models/base", "sha256": manifest}
    assert i1["policy"] == {"key": "models/base", "sha256": manifest}
    assert i1["verdicts"]["checker_versions"] == ["numeric-1"] == doc["checker_versions"]
    assert (
        i1["samples"]["sha256"][1] == hashlib.sha256(store.get_bytes(keys.samples_key(RUN, 1, 1))).hexdigest()
    )
    assert i1["kept"]["sha256"] == hashlib.sha256(store.get_bytes(keys.kept_key(RUN, 1))).hexdigest()
    assert i1["m_step"]["settings"]["learning_rate"] > 0 and i1["m_step"]["base_key"] == "models/base"
    assert lineage.check(store, doc) == ([], 7)  # base, 2 + 2 shards, kept, checkpoint


def test_the_check_names_a_changed_shard_file_and_a_missing_one(stored: tuple[LocalStore, pb.Run]) -> None:
    store, run = stored
    doc = lineage.build(store, run)
    key = keys.verdicts_key(RUN, 1, 0)
    store.put_bytes(key, store.get_bytes(key).replace(b"false", b"true ", 1))
    store.put_bytes(f"{keys.checkpoint_key(RUN, 1)}/model.safetensors", b"weightz")
    store.delete(keys.kept_key(RUN, 1))
    mismatches, _ = lineage.check(store, doc)
    assert len(mismatches) == 3, mismatches
    assert mismatches[0].startswith(f"iteration 1 verdicts shard 0 ({key}): sha256")
    assert mismatches[1] == f"iteration 1 kept set ({keys.kept_key(RUN, 1)}): missing"
    assert "iteration 1 checkpoint" in mismatches[2] and "model.safetensors" in mismatches[2]


def test_reverification_counts_shards_once_and_compares_the_verdicts(
    stored: tuple[LocalStore, pb.Run],
) -> None:
    store, run = stored
    cfg = parse_run_config(CONFIG, source="test")
    rv, decision = reverify.start(run, cfg)
    assert rv.number == 1 and [j.message.output_key for j in decision.jobs] == [
        keys.shard_key(keys.verdicts_prefix(RUN, 1, 1), s) for s in range(2)
    ]
    assert len({j.job_id for j in decision.jobs}) == 2 and all(
        j.message.reverification == 1 for j in decision.jobs
    )
    with pytest.raises(reverify.CannotReverify, match="being re-verified already"):
        reverify.start(run, cfg)
    # the new checker: p0's first sample is now wrong, p3's third now right
    now = (CORRECT - {"i1/p0/0"}) | {"i1/p3/2"}
    for shard in range(2):
        rows = _verdicts(now, "numeric-2", _samples(shard))
        store.put_bytes(keys.shard_key(keys.verdicts_prefix(RUN, 1, 1), shard), dumps_jsonl(rows))
    done = ev.VerifyDone(run_id=RUN, iteration=1, shard=0, num_samples=6, num_correct=2, reverification=1)
    assert reverify.on_done(run, done) is None and reverify.on_done(run, done) is None  # a redelivery
    assert reverify.open_jobs(run, cfg)[0].message.shard == 1
    last = reverify.on_done(
        run, ev.VerifyDone(run_id=RUN, iteration=1, shard=1, num_samples=6, num_correct=3, reverification=1)
    )
    assert last is not None and last.number == 1
    doc = reverify.changes(store, run, cfg, 1, IDS)
    reverify.apply_changes(run, 1, doc)
    part = run.reverifications[0].iterations[0]
    assert (part.flipped_to_correct, part.flipped_to_wrong, part.correct_samples) == (1, 1, 5)
    assert list(part.checkers_before) == ["numeric-1"] and list(part.checkers_after) == ["numeric-2"]
    assert part.kept_sets_differ == 2 and doc["iterations"][0]["problems_kept_differ"] == ["p0", "p3"]
    kept = {r["sample_id"] for r in loads_jsonl(store.get_bytes(part.kept_key))}
    assert {"i1/p3/1", "i1/p3/2"} <= kept and "i1/p0/0" not in kept
    assert run.reverifications[0].done and "1 to correct, 1 to wrong" in run.reverifications[0].summary


def test_a_fork_starts_filtering_the_source_samples_with_the_new_verdicts(
    stored: tuple[LocalStore, pb.Run],
) -> None:
    _, run = stored
    cfg = parse_run_config(CONFIG, source="test")
    rv, _ = reverify.start(run, cfg)
    rv.done, rv.iterations[0].correct_samples = True, 4
    f = fork.fork_run(run, "fork-1", cfg, CONFIG, 1)
    assert (f.forked_from, f.forked_at, f.forked_reverification) == (RUN, 1, 1)
    assert f.phase == pb.PHASE_FILTERING and [i.iteration for i in f.iterations] == [0, 1]
    it = f.iterations[1]
    assert it.samples_prefix == keys.samples_prefix(RUN, 1) and it.verdicts_prefix == keys.verdicts_prefix(
        RUN, 1, 1
    )
    assert list(it.shards_verified) == [0, 1] and it.correct_samples == 4 and not it.kept_key
    with pytest.raises(fork.CannotFork, match="sampled iterations \\[1\\]"):
        fork.fork_run(run, "fork-2", cfg, CONFIG, 2)
    with pytest.raises(fork.CannotFork, match="no finished reverification 3"):
        fork.fork_run(run, "fork-2", cfg, CONFIG, 1, reverification=3)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"em": {"cutoff": 2, "iterations": 3}}, None),
        ({"name": "other", "training": {"epochs": 3}}, None),
        ({"em": {"cutoff": 5}}, "em.cutoff differs"),
        ({"sampling": {"n": 2}}, "sampling.n differs"),
        ({"task": {"name": "arithmetic", "seed": 3}}, "task.seed differs"),
    ],
)
def test_a_fork_may_change_only_what_the_copied_iterations_do_not_depend_on(
    change: dict, error: str | None
) -> None:
    source = parse_run_config(CONFIG, source="test")
    doc = json.loads(CONFIG)
    for section, values in change.items():
        doc[section] = values if not isinstance(values, dict) else {**doc.get(section, {}), **values}
    changed = parse_run_config(json.dumps(doc), source="test")
    if error is None:
        fork.check_config(source, changed)
    else:
        with pytest.raises(fork.CannotFork, match=error):
            fork.check_config(source, changed)


def test_snapshots_keep_the_latest_state_and_write_a_finished_run_at_once(tmp_path: Path) -> None:
    import asyncio

    from services.coordinator.snapshots import Snapshots, stored_run_ids

    store = LocalStore(tmp_path / "store")

    async def go() -> None:
        snaps = Snapshots(store)
        run = pb.Run(run_id="snap-1", status=pb.RUN_STATUS_RUNNING)
        for i in range(50):  # a burst of changes: coalesced, the last one wins
            run.iteration = i
            await snaps.note(run)
        await snaps.flush()
        assert pb.Run.FromString(store.get_bytes(keys.state_key("snap-1"))).iteration == 49
        run.status = pb.RUN_STATUS_SUCCEEDED
        await snaps.note(run)  # no flush: a finished run is written before note returns
        assert pb.Run.FromString(store.get_bytes(keys.state_key("snap-1"))).status == pb.RUN_STATUS_SUCCEEDED

    asyncio.run(go())
    assert stored_run_ids(store) == ["snap-1"]


@pytest.mark.parametrize(
    ("argv", "fork"),
    [
        (["demo"], {}),  # the demo starts a run and never forks one
        (["run", "examples/arithmetic-demo.yaml"], {}),
        (["run", "--from", "run-1", "--iteration", "2"], {"from_run": "run-1", "from_iteration": 2, "from_reverification": 0}),
    ],
)  # fmt: skip
def test_commands_that_start_runs_reach_the_coordinator_with_their_fork_fields(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], fork: dict[str, object]
) -> None:
    from unittest import mock

    from shared.client import cli, stack

    class Reached(Exception):
        pass

    client = mock.MagicMock()
    client.__enter__.return_value.start_run.side_effect = Reached
    monkeypatch.setattr(stack, "load_stack", lambda state_dir: object())  # a stack is up: left up
    monkeypatch.setattr(stack, "up", lambda state_dir: None)
    monkeypatch.setattr(cli, "_client", lambda args: client)
    with pytest.raises(Reached):
        cli.main(argv)
    ((config_yaml, *_), kwargs) = client.__enter__.return_value.start_run.call_args
    assert kwargs == fork
    assert ("task:" in config_yaml) == (argv[0] == "demo" or "--from" not in argv)
