"""The coordinator's event adapter: apply result events to runs and publish the next jobs.

Every change to a run goes through `Orchestrator.mutate`: load the run and its revision from the
key-value store, apply a pure decision from `core`, publish the jobs it asks for (deterministic
ids, so a repeat is deduplicated), do the I/O it asks for (filtering, the report), then write the
run back with compare-and-set. The event is acked only after that write, so a coordinator killed
at any point re-applies the event on restart, and re-applying changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError, Message
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from shared import hints, keys
from shared.bus import ConflictError, DeadLetter, Delivery, EventBus, PermanentError
from shared.errors import NotFoundError
from shared.logs import job_context
from shared.runconfig import RunConfig, parse_run_config
from shared.store import ArtifactStore
from shared.tasks import loads_jsonl

from . import core, eval_shards, filter_io, job_records, jobs, lineage, metrics, reverify
from .plots import render_plots
from .report import build_report, render_markdown
from .snapshots import Snapshots
from .tracking import RunTrackers

log = logging.getLogger("restem.coordinator")

EVENT_TYPES: dict[str, type[Message]] = {
    "prepare_done": ev.PrepareDone,
    "sample_done": ev.SampleDone,
    "verify_done": ev.VerifyDone,
    "train_progress": ev.TrainProgress,
    "train_done": ev.TrainDone,
    "eval_done": ev.EvalDone,
    "job_failed": ev.JobFailed,
}
MAX_CAS_RETRIES = 20


def _read_ids(store: ArtifactStore, run_id: str, split: str) -> list[str]:
    """A split's problem ids: from its ids file, or (runs started by an older release) read from the
    dataset one line at a time, so a dataset of hundreds of MB is never held whole."""
    key = keys.dataset_ids_key(run_id, split)
    if store.exists(key):
        return [str(i) for i in json.loads(store.get_bytes(key))]
    key = keys.dataset_key(run_id, split)
    if not store.exists(key):
        return []
    with tempfile.TemporaryDirectory(prefix="restem-ids-") as tmp:
        path = Path(tmp) / "split.jsonl"
        store.get_file(key, path)
        with path.open(encoding="utf-8") as f:
            return [json.loads(line)["id"] for line in f if line.strip()]


def shard_source(run: pb.Run, it: pb.Iteration) -> filter_io.ShardSource:
    return filter_io.ShardSource(jobs.samples_prefix(run, it), jobs.verdicts_prefix(run, it))


class RunNotFound(NotFoundError, KeyError):
    pass


class Orchestrator:
    def __init__(
        self,
        bus: EventBus,
        store: ArtifactStore,
        *,
        sample_window: int = 0,
        verify_window: int = 0,
        sampler_slots: int = 0,
    ) -> None:
        self.bus = bus
        self.store = store
        # fair share: see `core.queued_shards` and `core.on_verify_done`
        self.sample_window, self.verify_window = sample_window, verify_window
        self.sampler_slots = sampler_slots
        self.feeds = filter_io.Feeds(store)  # the filter's input, read while shards are verified
        self.trackers = RunTrackers(store)
        self.snapshots = Snapshots(store)
        self._configs: dict[str, RunConfig] = {}
        self._ids: dict[str, dict[str, list[str]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # --- state access ---------------------------------------------------------------------------

    async def load(self, run_id: str) -> tuple[pb.Run, int]:
        got = await self.bus.runs.get(run_id)
        if got is None:
            raise RunNotFound(run_id)
        return pb.Run.FromString(got[0]), got[1]

    def config(self, run: pb.Run) -> RunConfig:
        if run.run_id not in self._configs:
            self._configs[run.run_id] = parse_run_config(run.config_yaml, source=f"run {run.run_id}")
        return self._configs[run.run_id]

    async def split_ids(self, run_id: str) -> dict[str, list[str]]:
        """Problem ids per split, read once from the datasets the run stored at start."""
        if run_id not in self._ids:
            cfg = self.config((await self.load(run_id))[0])
            splits = ("train", "validation", "test", *(t.split for t in cfg.evaluation.transfer))
            self._ids[run_id] = {s: await asyncio.to_thread(_read_ids, self.store, run_id, s) for s in splits}
        return self._ids[run_id]

    async def publish(self, decision: core.Decision) -> None:
        # Each job recorded before it is published, so a restarted coordinator can re-publish a job
        # whose message is lost; many at once, so a large fan-out is not one round trip per job.
        await job_records.record_and_publish(self.store, decision.jobs, self.publish_one)

    async def _hint(self, run_id: str, checkpoints: list[str]) -> None:
        for key in checkpoints:
            try:
                await hints.publish_policy(self.bus, run_id, key)
            except Exception as exc:
                log.warning("could not hint policy %s of run %s: %s", key, run_id, exc)

    async def publish_one(self, job: core.Job) -> None:
        run_id = job.message.run_id  # type: ignore[attr-defined]
        metrics.JOBS_PUBLISHED.labels(job.job_type).inc()
        await self.bus.publish_job(job.job_type, run_id, job.message.SerializeToString(), msg_id=job.job_id)

    async def mutate(
        self, run_id: str, apply: Callable[[pb.Run, RunConfig, dict[str, list[str]]], core.Decision]
    ) -> pb.Run:
        """Apply a decision to a run with compare-and-set, retrying when another writer won."""
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        async with lock:
            for _ in range(MAX_CAS_RETRIES):
                run, revision = await self.load(run_id)
                with job_context(phase=metrics.phase_name(run.phase)):
                    if await self._apply_once(run, revision, apply):
                        return run
                log.info("run %s changed underneath; re-applying", run_id)
            raise ConflictError(f"run {run_id}: gave up after {MAX_CAS_RETRIES} concurrent updates")

    async def _apply_once(
        self,
        run: pb.Run,
        revision: int,
        apply: Callable[[pb.Run, RunConfig, dict[str, list[str]]], core.Decision],
    ) -> bool:
        """One compare-and-set attempt: decide, publish, filter and report, then store; False on a conflict."""
        phase, started = run.phase, run.phase_started.ToDatetime(UTC)
        cfg = self.config(run)
        ids = await self.split_ids(run.run_id)
        decision = apply(run, cfg, ids)
        for it in decision.digest:
            it.checkpoint_sha256 = await asyncio.to_thread(
                lineage.manifest_sha256, self.store, it.checkpoint_key
            )
        await self.publish(decision)
        await self._hint(run.run_id, decision.prefetch)
        if decision.needs_filter:
            await self.publish(await self._filter(run, cfg, ids))
        if decision.reverify_changes:
            doc = await asyncio.to_thread(
                reverify.changes, self.store, run, cfg, decision.reverify_changes, ids["train"]
            )
            reverify.apply_changes(run, decision.reverify_changes, doc)
            log.info("run %s reverification %d: %s", run.run_id, decision.reverify_changes, doc["summary"])
        if decision.finished or (run.status in core.FINISHED and not run.report_key):
            await self._write_report(run)
        try:
            await self.bus.runs.update(run.run_id, run.SerializeToString(), revision=revision)
        except ConflictError:
            return False
        await self.snapshots.note(run)
        metrics.phase_ended(run, phase, started)
        if run.status in core.FINISHED:
            self.feeds.drop(run.run_id)
        return True

    # --- I/O the decisions ask for ----------------------------------------------------------

    async def _filter(self, run: pb.Run, cfg: RunConfig, ids: dict[str, list[str]]) -> core.Decision:
        # In a thread, one shard at a time: the loop keeps serving the API and other runs meanwhile.
        it = run.iterations[-1]
        source = shard_source(run, it)
        out = await asyncio.to_thread(
            filter_io.filter_iteration,
            self.store,
            run.run_id,
            it.iteration,
            shards=it.shards_total,
            rounds_done=it.sampling_rounds,
            cfg=cfg,
            problem_ids=ids["train"],
            feed=self.feeds.get(run.run_id, it.iteration),
            source=source,
            # A fork's iteration re-filters its source's samples: no new round writes among them.
            plan_rounds=source.samples_prefix == keys.samples_prefix(run.run_id, it.iteration),
        )
        metrics.FILTER_SECONDS.observe(out.seconds)
        if out.plan is not None:
            log.info(
                "run %s iteration %d: round %d samples %d problems x %d (filter %.2f s)",
                run.run_id, it.iteration, it.sampling_rounds + 1, len(out.plan.problem_ids), out.plan.n, out.seconds,
            )  # fmt: skip
            return core.on_round_planned(run, cfg, it.iteration, out.plan, self.sampler_slots)
        stats = out.stats
        assert stats is not None
        self.feeds.drop(run.run_id, upto=it.iteration)
        it.kept_key, it.kept_sha256 = keys.kept_key(run.run_id, it.iteration), out.kept_sha256
        it.lineage_key = await asyncio.to_thread(lineage.record, self.store, run, it, source, out)
        log.info(
            "run %s iteration %d: %d/%d samples correct, %d/%d problems solved, %d kept (%d duplicates dropped); filter %.2f s",
            run.run_id, it.iteration, stats.correct, stats.samples, stats.problems_solved, stats.problems_total, stats.kept, stats.duplicates_dropped, out.seconds,
        )  # fmt: skip
        return core.on_filtered(run, cfg, it.iteration, stats, self._splits(cfg, ids))

    async def _results(self, run: pb.Run, split: str) -> dict[str, list[dict]]:
        """Per-problem results of `split` for every checkpoint that has them (difficulty buckets on
        test; paired tests of the chosen iteration against the runner-up on validation)."""
        where = {("base" if it.iteration == 0 else str(it.iteration)): eval_shards.result_keys(e)
                 for it in run.iterations for e in it.evals if e.split == split}  # fmt: skip
        for e in run.sft.evals:
            if e.split == split:
                where["sft"] = eval_shards.result_keys(e)
        out = {}
        for name, parts in where.items():
            rows = await asyncio.to_thread(_read_rows, self.store, parts)
            if rows is not None:
                out[name] = rows
        return out

    async def _write_report(self, run: pb.Run) -> None:
        """report.md and the plots first, report.json last: the JSON's key is the report's commit point."""
        links = await asyncio.to_thread(self.trackers.links, run.run_id)
        report = build_report(
            run,
            await self._results(run, "test"),
            tracking=links,
            validation_results=await self._results(run, "validation"),
        )
        files = await asyncio.to_thread(render_plots, report)
        files["report.md"] = render_markdown(report, plots=sorted(files)).encode()
        for name, data in files.items():
            await asyncio.to_thread(self.store.put_bytes, keys.report_key(run.run_id, name), data)
        report["files"] = sorted(files)
        key = keys.report_key(run.run_id, "report.json")
        await asyncio.to_thread(self.store.put_bytes, key, json.dumps(report, indent=2).encode())
        run.report_key = key

    @staticmethod
    def _splits(cfg: RunConfig, ids: dict[str, list[str]]) -> dict[str, int]:
        return jobs.eval_splits(cfg, {k: len(v) for k, v in ids.items()})

    # --- events -----------------------------------------------------------------------------------

    async def on_event(self, delivery: Delivery) -> None:
        kind = delivery.subject.rsplit(".", 1)[-1]
        cls = EVENT_TYPES.get(kind)
        metrics.EVENTS.labels(kind if cls is not None else "unknown").inc()
        if cls is None:
            log.warning("ignoring unknown event %s", delivery.subject)
            return
        try:
            msg: Any = cls.FromString(delivery.data)
        except DecodeError as exc:
            raise PermanentError(f"event {delivery.subject} is not a valid {cls.__name__}") from exc
        ids = {"iteration": getattr(msg, "iteration", None), "job_id": getattr(msg, "job_id", None)}
        with job_context(run_id=msg.run_id, **ids):
            await self._on_message(kind, msg)

    async def _on_message(self, kind: str, msg: Any) -> None:
        try:
            run = await self.mutate(msg.run_id, lambda run, cfg, ids: self._apply(kind, msg, run, cfg, ids))
        except RunNotFound:
            log.warning("event %s for unknown run %s ignored", kind, msg.run_id)
            return
        try:
            with job_context(phase=metrics.phase_name(run.phase)):
                await self.trackers.observe(run, self.config(run))
        except Exception as exc:  # tracking never fails a run (shared.tracking retries and warns itself)
            log.warning("run %s: tracking skipped this event: %s", run.run_id, exc)
        verifying = (pb.PHASE_SAMPLING, pb.PHASE_VERIFYING)
        if (
            kind == "verify_done"
            and run.phase in verifying
            and run.iteration == msg.iteration
            and not msg.reverification
        ):
            self.feeds.verified(
                run.run_id,
                msg.iteration,
                msg.shard,
                self.config(run),
                self._ids[run.run_id]["train"],
                shard_source(run, run.iterations[-1]),
            )

    def _apply(
        self, kind: str, msg: Any, run: pb.Run, cfg: RunConfig, ids: dict[str, list[str]]
    ) -> core.Decision:
        splits = self._splits(cfg, ids)
        if kind == "prepare_done":
            return core.on_prepare_done(run, cfg, msg, splits)
        if kind == "sample_done":
            return core.on_sample_done(run, cfg, msg, ids["train"], self.sample_window, self.verify_window)
        if kind == "verify_done" and msg.reverification:
            done = reverify.on_done(run, msg)
            return core.Decision(reverify_changes=done.number if done else 0)
        if kind == "verify_done":
            return core.on_verify_done(run, msg, cfg, self.verify_window)
        if kind == "train_progress":
            return core.on_train_progress(run, msg)
        if kind == "train_done":
            if msg.variant == "sft":
                return core.on_sft_train_done(run, cfg, msg, splits)
            return core.on_train_done(run, cfg, msg, splits)
        if kind == "eval_done":
            if msg.variant == "sft":
                return core.on_sft_eval_done(run, msg, splits)
            return core.on_eval_done(
                run, cfg, msg, splits, ids["train"], self.sample_window, self.sampler_slots
            )
        return core.on_job_failed(run, msg)

    async def _fail_dead_lettered(self, dl: DeadLetter) -> None:
        # restem.jobs.<type>.<run_id> or restem.events.<run_id>.<kind>: a dead event stalls its run too.
        _, stream, first, second = dl.subject.split(".", 3)
        job_type, run_id = (first, second) if stream == "jobs" else (f"{second} event", first)
        failed = ev.JobFailed(run_id=run_id, job_id="?", job_type=job_type, reason=dl.reason)

        def fail(run: pb.Run, cfg: RunConfig, ids: dict[str, list[str]]) -> core.Decision:
            rv = reverify.pending(run)
            if run.status in core.FINISHED and rv is not None:  # the run stands; its reverification failed
                rv.done, rv.summary = True, f"failed: a {job_type} could not be done ({dl.reason})"
                rv.finished.FromDatetime(datetime.now(UTC))
                return core.Decision()
            return core.on_job_failed(run, failed)

        with contextlib.suppress(RunNotFound, ValueError):
            await self.mutate(run_id, fail)

    async def sweep_dead_letters(self, stop: asyncio.Event, every_s: float) -> None:
        """Fail runs whose jobs were dead-lettered without a JobFailed event (e.g. a worker that kept crashing).

        Each pass reads only the dead letters stored since the last one (the stream ages them out).
        """
        last_seq = 0
        while not stop.is_set():
            try:
                for dl in await self.bus.dead_letters(after_seq=last_seq):
                    await self._fail_dead_lettered(dl)
                    last_seq = dl.seq
            except Exception:
                log.exception("dead-letter sweep failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)


def _read_rows(store: ArtifactStore, parts: list[str]) -> list[dict] | None:
    """The result rows of a split's files (a split in shards has one per shard), None when any is missing."""
    if not parts or not all(store.exists(key) for key in parts):
        return None
    return [row for key in parts for row in loads_jsonl(store.get_bytes(key))]
