"""Prepare and train jobs from the work queue.

Prepare: convert the run's base model into a normal checkpoint in the store (once per source;
the key is content-addressed). Train: fine-tune the BASE checkpoint on the kept set with
reward-weighted NLL (full or LoRA, merged before saving) and upload the result, saving a resumable
step state every `checkpoint_every_steps` steps (see `state.py`), so a redelivered job continues from
its last state. Both are idempotent: a checkpoint whose manifest exists
is only re-announced. The directory is committed by its manifest, written last, so a trainer
killed mid-upload leaves nothing that looks complete.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from restem.events.v1 import events_pb2 as ev

from shared.artifacts import CheckpointCache
from shared.bus import EventBus, PermanentError
from shared.jobparams import train_params
from shared.models import ModelNotFound, resolve_model_source
from shared.store import ArtifactNotFound, ArtifactStore
from shared.tasks import loads_jsonl

from .core import MODEL_INFO, TRAIN_SUMMARY, examples_from_kept, summary_dict
from .state import StepStates

log = logging.getLogger("services.trainer")


class PrepareHandler:
    def __init__(self, bus: EventBus, store: ArtifactStore, work_dir: Path) -> None:
        self.bus, self.store, self.work_dir = bus, store, work_dir

    def _import(self, source: Path, key: str) -> dict[str, Any]:
        from shared.llm.checkpoint import import_checkpoint

        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            out = Path(tmp) / "model"
            info = import_checkpoint(source, out)
            (out / MODEL_INFO).write_text(json.dumps(info, default=str))
            self.store.put_dir(key, out)
        return info

    async def __call__(self, job: ev.PrepareJob) -> None:
        from shared.llm.checkpoint import CheckpointError

        started = time.monotonic()
        try:
            if await asyncio.to_thread(self.store.dir_exists, job.model_key):
                info = json.loads(
                    await asyncio.to_thread(self.store.get_bytes, f"{job.model_key}/{MODEL_INFO}")
                )
            else:
                source = resolve_model_source(job.model_source)
                info = await asyncio.to_thread(self._import, source, job.model_key)
        except (ModelNotFound, CheckpointError) as exc:
            raise PermanentError(str(exc)) from exc
        done = ev.PrepareDone(
            run_id=job.run_id,
            job_id=job.job_id,
            model_key=job.model_key,
            architecture=str(info.get("architecture", "")),
            num_parameters=int(info.get("num_parameters", 0)),
            max_position_embeddings=int(info.get("max_position_embeddings", 0) or 0),
            seconds=time.monotonic() - started,
        )
        await self.bus.publish_event(
            job.run_id, "prepare_done", done.SerializeToString(), msg_id=f"{job.job_id}.done"
        )


class TrainHandler:
    def __init__(
        self, bus: EventBus, store: ArtifactStore, checkpoints: CheckpointCache, work_dir: Path, device: str
    ) -> None:
        self.bus, self.store, self.checkpoints = bus, store, checkpoints
        self.work_dir, self.device = work_dir, device

    def _progress_callback(self, job: ev.TrainJob, loop: asyncio.AbstractEventLoop) -> Any:
        last = [0.0]

        def on_step(step: int, total: int, loss: float) -> None:
            now = time.monotonic()
            if step != total and now - last[0] < 1.0:
                return  # at most one progress event per second
            last[0] = now
            msg = ev.TrainProgress(
                run_id=job.run_id,
                job_id=job.job_id,
                iteration=job.iteration,
                step=step,
                total_steps=total,
                loss=loss,
            )
            coro = self.bus.publish_event(
                job.run_id, "train_progress", msg.SerializeToString(), msg_id=f"{job.job_id}.step{step}"
            )
            asyncio.run_coroutine_threadsafe(coro, loop)

        return on_step

    @staticmethod
    def _renderer(job: ev.TrainJob, tokenizer: Any) -> Any:
        from shared.llm.generation import render_prompt

        fmt = job.prompt_format
        return lambda message: render_prompt(
            tokenizer, message, system=fmt.system_prompt or None, chat=fmt.chat_template
        )

    def _train(self, job: ev.TrainJob, base_dir: Path, rows: list[dict], on_step: Any) -> dict[str, Any]:
        from shared.llm.checkpoint import load_for_training, save_checkpoint
        from shared.llm.training import train_reward_weighted

        states = StepStates(self.store, job.output_key)
        model, tokenizer = load_for_training(base_dir, self.device)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            # A trainer killed mid-M-step left its last step state in the store: continue from it.
            resume = states.fetch_latest(Path(tmp))
            stats = train_reward_weighted(
                model,
                tokenizer,
                examples_from_kept(rows, render=self._renderer(job, tokenizer)),
                train_params(job.params),
                device=self.device,
                on_step=on_step,
                resume_from=resume,
                on_state=states.commit,
            )
        if stats.resumed_from_step:
            log.info("M-step %s resumed from step %d", job.job_id, stats.resumed_from_step)
        summary = summary_dict(stats, base_key=job.base_key, kept_key=job.kept_key)
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            out = Path(tmp) / "checkpoint"
            save_checkpoint(model, tokenizer, out)  # LoRA: already merged, so a plain checkpoint
            for extra in ("generation_config.json",):
                if (base_dir / extra).is_file() and not (out / extra).exists():
                    shutil.copy(base_dir / extra, out / extra)
            (out / TRAIN_SUMMARY).write_text(json.dumps(summary))
            self.store.put_dir(job.output_key, out)
        states.clear()
        return summary

    async def __call__(self, job: ev.TrainJob) -> None:
        from shared.llm.checkpoint import CheckpointError

        if await asyncio.to_thread(self.store.dir_exists, job.output_key):
            summary = json.loads(
                await asyncio.to_thread(self.store.get_bytes, f"{job.output_key}/{TRAIN_SUMMARY}")
            )
            # killed between committing the checkpoint and deleting its step states: finish the cleanup
            await asyncio.to_thread(StepStates(self.store, job.output_key).clear)
        else:
            try:
                base_dir = await self.checkpoints.fetch(job.base_key)
                rows = loads_jsonl(await asyncio.to_thread(self.store.get_bytes, job.kept_key))
                if not rows:
                    raise ValueError(
                        f"kept set {job.kept_key} is empty; the coordinator skips the M-step in that case"
                    )
                on_step = self._progress_callback(job, asyncio.get_running_loop())
                summary = await asyncio.to_thread(self._train, job, base_dir, rows, on_step)
            except (ArtifactNotFound, CheckpointError, ValueError) as exc:
                raise PermanentError(str(exc)) from exc
        done = ev.TrainDone(
            run_id=job.run_id,
            job_id=job.job_id,
            iteration=job.iteration,
            checkpoint_key=job.output_key,
            steps=summary["steps"],
            examples=summary["examples"],
            tokens=summary["tokens"],
            loss_first=summary["loss_first"],
            loss_last=summary["loss_last"],
            seconds=summary["seconds"],
            variant=job.variant,
        )
        await self.bus.publish_event(
            job.run_id, "train_done", done.SerializeToString(), msg_id=f"{job.job_id}.done"
        )
