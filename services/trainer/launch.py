"""Multi-process M-steps: the trainer service starts ``nproc`` torchrun workers for one job and waits.

The service process stays the only one that talks to NATS (it holds the job and heartbeats it);
for each M-step with ``nproc > 1`` it writes the ``MStepSpec`` to the job's scratch directory and runs

    python -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node=N -m services.trainer.launch SPEC

Each worker joins the process group (NCCL on CUDA with one GPU per local rank, gloo on CPU; see
``shared.llm.distributed``) and runs ``mstep.execute`` with its rank and the trainer's ``sharding``
(``none``: every rank holds the whole model; ``fsdp``: each holds a shard). Only rank 0 writes: step states
go straight to the store (``StepStates``, opened from the store settings in the spec; the S3
credentials travel in the environment, never in the file), progress lines to ``progress.jsonl``
(which the service turns into TrainProgress events) and the consolidated checkpoint to ``out_dir``,
which the service uploads. A worker that fails with a bad-input error (``ValueError``,
``CheckpointError``) leaves its message in ``error.txt`` and the job fails permanently with it; any
other failure is retried like an in-process crash. Workers stop when the service process is gone
(polled after each step), so a killed trainer leaves no orphans training on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import abandon
from shared.llm.step_report import StepReport

from .mstep import SUMMARY, MStepSpec

log = logging.getLogger("services.trainer.launch")
SPEC, PROGRESS, ERROR, WORKER_ENV = "spec.json", "progress.jsonl", "error.txt", "worker.json"
POLL_S = 0.5


class WorkerFailed(RuntimeError):
    """The training workers exited with an error that a retry may fix."""


def launch(
    spec: MStepSpec,
    nproc: int,
    env: dict[str, str],
    output_key: str,
    on_step: Callable[[StepReport], None] | None = None,
) -> dict[str, Any]:
    """Run the M-step on ``nproc`` workers; the TrainStats dict (raises ValueError on bad input).

    ``env``: the workers' settings (``worker_settings``); ``output_key``: the job's checkpoint key,
    under which rank 0 commits the step states.
    """
    scratch = Path(spec.scratch_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    spec.dump(scratch / SPEC)
    progress = scratch / PROGRESS
    progress.unlink(missing_ok=True)
    (scratch / ERROR).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc-per-node={nproc}", "-m", "services.trainer.launch", str(scratch / SPEC)]  # fmt: skip
    child_env = {
        **os.environ,
        **env,
        "RESTEM_TRAINER_PARENT_PID": str(os.getpid()),
        "RESTEM_TRAINER_OUTPUT_KEY": output_key,
    }
    proc = subprocess.Popen(cmd, env=child_env, start_new_session=True)
    seen = 0
    try:
        while True:
            rc = proc.poll()
            seen = _relay(progress, seen, on_step)
            if rc is not None:
                break
            abandon.check()  # the run ended: the workers are killed below
            time.sleep(POLL_S)
    except BaseException:
        _kill(proc)
        raise
    if rc != 0:
        error = scratch / ERROR
        if error.is_file():
            raise ValueError(error.read_text())
        raise WorkerFailed(
            f"the {nproc} training workers failed (torchrun exit code {rc}); see the trainer log"
        )
    return dict(json.loads((Path(spec.out_dir).parent / SUMMARY).read_text()))


def _relay(progress: Path, seen: int, on_step: Callable[[StepReport], None] | None) -> int:
    """Hand the progress lines after the first ``seen`` to ``on_step``; the number of lines seen."""
    if not progress.is_file():
        return seen
    text = progress.read_text()
    lines = text.splitlines()
    complete = lines if text.endswith("\n") else lines[:-1]  # the last line may be half written
    if on_step is not None:
        for line in complete[seen:]:
            on_step(StepReport(**json.loads(line)))
    return max(seen, len(complete))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Stop torchrun and its workers (their own session: nothing else of ours is in that group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun forwards it to its workers
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def worker_settings(
    device: str, store: Any, verifier_address: str | None, verify_timeout_s: float, sharding: str = "none"
) -> dict[str, str]:
    """The environment of the workers: settings (no secrets) as JSON, S3 credentials as their usual variables."""
    settings = {
        "device": device,
        "sharding": sharding,
        "store": store.model_dump(
            mode="json", exclude={"access_key", "secret_key", "access_key_file", "secret_key_file"}
        ),
        "verifier_address": verifier_address,
        "verify_timeout_s": verify_timeout_s,
    }
    env = {"RESTEM_TRAINER_WORKER": json.dumps(settings)}
    for field, var in (("access_key", "RESTEM_S3_ACCESS_KEY"), ("secret_key", "RESTEM_S3_SECRET_KEY")):
        secret = getattr(store, field, None)
        if secret is not None:
            env[var] = secret.get_secret_value()
    return env


def _check_parent() -> bool:
    """Exit when the trainer service that started us is gone (its job is redelivered elsewhere)."""
    parent = int(os.environ.get("RESTEM_TRAINER_PARENT_PID", "0"))
    if parent > 0:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            raise SystemExit(f"the trainer service (pid {parent}) is gone; stopping this M-step") from None
        except PermissionError:  # a pid reused by another user's process: ours is gone too
            raise SystemExit(f"the trainer service (pid {parent}) is gone; stopping this M-step") from None
    return False


def _rank0_hooks(spec_path: Path, settings: dict[str, Any], output_key: str) -> tuple[Any, Any]:
    from shared.infra import StoreConfig
    from shared.store import open_store

    from .state import StepStates

    states = StepStates(open_store(StoreConfig(**settings["store"])), output_key)
    progress = spec_path.parent / PROGRESS

    def on_step(report: StepReport) -> None:
        with progress.open("a") as f:
            f.write(json.dumps(dataclasses.asdict(report)) + "\n")

    return on_step, states.commit


def worker_main(spec_path: Path) -> None:
    """One torchrun worker: join the group, train, and (rank 0) write the results."""
    import torch.distributed as dist

    from shared.llm.checkpoint import CheckpointError
    from shared.llm.distributed import init_from_env

    from .mstep import execute
    from .validation import grpc_scorer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank%(process)d %(name)s %(message)s")
    settings = json.loads(os.environ["RESTEM_TRAINER_WORKER"])
    spec = MStepSpec.load(spec_path)
    dp, device = init_from_env(settings["device"], settings.get("sharding", "none"))
    on_step = on_state = None
    if dp.rank == 0:
        on_step, on_state = _rank0_hooks(spec_path, settings, os.environ["RESTEM_TRAINER_OUTPUT_KEY"])
    scorer = None
    if spec.validation is not None and settings.get("verifier_address"):
        token = os.environ.get("RESTEM_TRAINER_VERIFY_TOKEN") or None
        scorer = grpc_scorer(
            settings["verifier_address"], spec.validation["task"], token, settings["verify_timeout_s"]
        )
    try:
        execute(
            spec, device, scorer=scorer, dp=dp, on_step=on_step, on_state=on_state, should_stop=_check_parent
        )
    except (ValueError, CheckpointError) as exc:
        if dp.rank == 0:
            (spec_path.parent / ERROR).write_text(str(exc))
        raise  # torchrun then stops the other ranks (which may wait in a collective forever)
    dist.destroy_process_group()


if __name__ == "__main__":
    worker_main(Path(sys.argv[1]))
