"""Coordinator restart: re-enter every running run from its stored state and re-publish its open jobs.

Events are durable and acked only after the run is written back, so a restarted coordinator
already re-applies whatever it was doing. What it cannot see from events alone is a job message
that is gone (purged by hand, lost with a NATS volume, dead-lettered by an older release): the run
would wait for ever. So every job is also recorded in the store when it is first published
(`runs/<run_id>/jobs/<type>/<job_id>.pb`, written before the publish), and on start the
coordinator re-publishes, for each running run, the recorded jobs of its current phase that have
not reported back (`outstanding`, a pure function of the run and the job).

Re-publishing is idempotent: a job id is its Nats-Msg-Id, so a job still queued (or published in
the last 10 minutes) is deduplicated by NATS; one that already ran finds its output in the store
and only re-announces it; the coordinator ignores a result it has already applied.

Not covered: a job published more than 10 minutes ago that is still running on a worker is handed
out a second time; with one replica per queue it waits for the first, with several it may run
twice at once (same inputs, same seed, same output key: the last complete write wins).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from restem.coordinator.v1 import coordinator_pb2 as pb

from shared.ordering import gather_bounded

from . import core, job_records, reverify

if TYPE_CHECKING:
    from .events import Orchestrator

log = logging.getLogger("restem.coordinator.reconcile")


# The job types a run in each phase may wait for (the SFT baseline's jobs run beside any phase).
PHASE_JOBS = {
    pb.PHASE_PREPARING: ("prepare", "train", "eval"),
    pb.PHASE_SAMPLING: ("sample", "verify", "train", "eval"),
    pb.PHASE_VERIFYING: ("verify", "train", "eval"),
    pb.PHASE_TRAINING: ("train", "eval"),
    pb.PHASE_EVALUATING: ("eval", "train"),
}


def _current_iteration(run: pb.Run, iteration: int) -> pb.Iteration | None:
    if run.iteration != iteration or not run.iterations or run.iterations[-1].iteration != iteration:
        return None
    return run.iterations[-1]


def outstanding(run: pb.Run, job_type: str, msg: Any) -> bool:
    """Whether the run still waits for this job's result in its current state."""
    if run.status in core.FINISHED:
        return False
    if job_type == "prepare":
        return bool(run.phase == pb.PHASE_PREPARING)
    if getattr(msg, "variant", "") == "sft":
        if not run.sft_enabled:
            return False
        if job_type == "train":
            return not run.sft.checkpoint_key
        return bool(run.sft.checkpoint_key) and _eval_outstanding(run.sft, msg)
    it = _current_iteration(run, msg.iteration)
    if it is None:
        return False
    if job_type == "sample":
        return run.phase == pb.PHASE_SAMPLING and msg.shard not in it.shards_sampled
    if job_type == "verify":
        phases = (pb.PHASE_SAMPLING, pb.PHASE_VERIFYING)
        return run.phase in phases and msg.shard in it.shards_sampled and msg.shard not in it.shards_verified
    if job_type == "train":
        return bool(run.phase == pb.PHASE_TRAINING)
    if job_type == "eval":
        return run.phase == pb.PHASE_EVALUATING and _eval_outstanding(it, msg)
    return False


def _eval_outstanding(it: pb.Iteration, msg: Any) -> bool:
    """Neither the eval job's split nor (a split in shards) its shard is recorded yet."""
    if any(e.split == msg.split for e in it.evals):
        return False
    return msg.num_shards <= 1 or all(s.split != msg.split or s.shard != msg.shard for s in it.eval_shards)


def open_jobs(run: pb.Run, jobs: Sequence[core.Job]) -> list[core.Job]:
    """The recorded jobs the run still waits for."""
    return [j for j in jobs if outstanding(run, j.job_type, j.message)]


async def reconcile_run(orc: Orchestrator, run_id: str) -> int:
    """Re-enter one run: finish a half-done filter or report, re-publish its open jobs; how many."""
    run, _ = await orc.load(run_id)
    if run.phase == pb.PHASE_FILTERING or (run.status in core.FINISHED and not run.report_key):
        # `mutate` redoes the filter of a FILTERING run and writes a finished run's missing report.
        def resume(r: pb.Run, cfg: Any, ids: Any) -> core.Decision:
            return core.Decision(needs_filter=r.phase == pb.PHASE_FILTERING and r.status not in core.FINISHED)

        run = await orc.mutate(run_id, resume)
    if run.status in core.FINISHED:
        # A finished run may be being re-verified: its verdicts still to come are re-published.
        rv_jobs = reverify.open_jobs(run, orc.config(run))
        await gather_bounded(job_records.IO_CONCURRENCY, (orc.publish_one(job) for job in rv_jobs))
        return len(rv_jobs)
    jobs = open_jobs(
        run,
        await job_records.recorded_jobs(
            orc.store, run_id, PHASE_JOBS.get(run.phase, tuple(job_records.JOB_MESSAGES))
        ),
    )
    await gather_bounded(job_records.IO_CONCURRENCY, (orc.publish_one(job) for job in jobs))
    window_jobs = core.windowed_jobs(
        run, orc.config(run), (await orc.split_ids(run_id))["train"], orc.sample_window, orc.verify_window
    )
    await orc.publish(core.Decision(jobs=window_jobs))
    phase = core.PHASE_NAMES.get(run.phase, str(run.phase))
    log.info(
        "run %s re-entered in %s (iteration %d): %d open jobs re-published",
        run_id,
        phase,
        run.iteration,
        len(jobs),
    )
    return len(jobs)


async def reconcile_all(orc: Orchestrator) -> dict[str, int]:
    """`reconcile_run` for every stored run that is running or lacks its report; a failure is logged."""
    done: dict[str, int] = {}
    for run_id, value, _ in await orc.bus.runs.entries():
        try:
            run = pb.Run.FromString(value)
            if run.status in core.FINISHED and run.report_key and reverify.pending(run) is None:
                continue
            done[run_id] = await reconcile_run(orc, run_id)
        except Exception:
            # One broken run must not keep the others from resuming; its events still drive it.
            log.exception("could not re-enter run %s", run_id)
    return done
