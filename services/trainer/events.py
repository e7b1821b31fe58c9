"""Prepare and train jobs from the work queue.

Prepare: convert the run's base model into a normal checkpoint in the store (once per source;
the key is content-addressed). Train: fine-tune the BASE checkpoint on the kept set with
reward-weighted NLL (full or LoRA, merged before saving) and upload the result, saving a resumable
step state every `checkpoint_every_steps` steps (see `state.py`), so a redelivered job continues from
its last state. The kept set is streamed into a tokenised set on disk (`shared.llm.dataset`); with a
validation split the job stops on validation reward (`shared.llm.early_stop`); with `nproc > 1` the
training runs in torchrun workers (`launch.py`). Everything scratch lives under the trainer's
`work_dir`, in one directory per M-step that is deleted when it ends. Both are idempotent: a checkpoint whose manifest exists
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
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from restem.events.v1 import events_pb2 as ev

from shared import abandon, model_files
from shared.artifacts import CheckpointCache
from shared.auth import server_token
from shared.bus import EventBus, PermanentError
from shared.infra import StoreConfig
from shared.models import ModelNotFound, hub_id, resolve_model_source
from shared.params import GenerationParams, TrainParams, as_dict, from_proto
from shared.store import ArtifactNotFound, ArtifactStore
from shared.tasks import loads_jsonl
from shared.worker import announce

from . import metrics
from .config import HubSettings
from .core import MODEL_INFO, TRAIN_SUMMARY, examples_from_kept, summary_dict
from .launch import launch, worker_settings
from .mstep import MStepSpec, execute
from .state import StepStates
from .tracking import MStepTracking
from .validation import ValidationSet, grpc_scorer

if TYPE_CHECKING:
    from shared.llm.step_report import StepReport

    from .config import TrainerConfig

log = logging.getLogger("services.trainer")


# What a base model needs from a Hub repository (not its .bin / .pt duplicates or other formats).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def fetch_hub(repo: str, revision: str, hub: HubSettings) -> Path:
    """The model's directory in the huggingface_hub cache, downloaded first unless `hub.offline`."""
    import os

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    token = hub.token_file.read_text().strip() if hub.token_file else os.environ.get("HF_TOKEN")
    try:
        path = snapshot_download(
            repo,
            revision=revision,
            cache_dir=hub.cache_dir,
            token=token or None,
            local_files_only=hub.offline,
            allow_patterns=HUB_FILES,
        )
    except LocalEntryNotFoundError:
        where = "the trainer is offline (hub.offline)" if hub.offline else "the Hub could not be reached"
        raise ModelNotFound(
            f"model.base: {repo}@{revision} is not in the Hugging Face cache and {where}"
        ) from None
    except HfHubHTTPError as exc:  # no such repository or revision, gated, bad token
        raise ModelNotFound(f"model.base: {repo}@{revision}: {str(exc).splitlines()[0]}") from None
    return Path(str(path))


class PrepareHandler:
    def __init__(
        self,
        bus: EventBus,
        store: ArtifactStore,
        work_dir: Path,
        import_cache: Path | None = None,
        store_config: StoreConfig | None = None,
        hub: HubSettings | None = None,
    ) -> None:
        """`store_config`: the S3 endpoint and credentials that `s3://` model sources are read with;
        `hub`: how Hub ids are fetched."""
        self.bus, self.store, self.work_dir, self.import_cache = bus, store, work_dir, import_cache
        self.store_config, self.hub = store_config or StoreConfig(), hub or HubSettings()

    def _import(self, source: Path, key: str) -> dict[str, Any]:
        """Convert `source` and put it under `key`, reusing a host-cached conversion when there is one.

        A cache entry is a converted checkpoint directory named after the (content-addressed) model
        key, and it only appears by a rename once complete, so a trainer killed mid-conversion
        leaves at most a temporary directory, never an entry that looks whole.
        """
        from shared.llm.checkpoint import import_checkpoint

        cached = self.import_cache / key.replace("/", "--") if self.import_cache else None
        if cached is not None and (cached / MODEL_INFO).is_file():
            log.info("model %s: reusing the conversion cached in %s", key, cached)
            self.store.put_dir(key, cached)
            return dict(json.loads((cached / MODEL_INFO).read_text()))
        scratch = self.import_cache if self.import_cache else self.work_dir
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch, prefix=".importing-") as tmp:
            out = Path(tmp) / "model"
            info = import_checkpoint(source, out)
            (out / MODEL_INFO).write_text(json.dumps(info, default=str))
            if cached is not None:
                if cached.exists():  # not made by a rename above (no MODEL_INFO): not ours to trust
                    shutil.rmtree(cached, ignore_errors=True)
                try:
                    out.rename(cached)
                    out = cached
                except OSError:  # another trainer on this host cached it first: keep ours for this put
                    pass
            self.store.put_dir(key, out)
        return info

    def _source(self, model_source: str) -> Path:
        """The model to import: a path here, or an uploaded model fetched from the store first."""
        hub = hub_id(model_source)
        if hub is not None:
            return fetch_hub(*hub, self.hub)
        if model_source.startswith("s3://"):
            source, prefix, objects = model_files.s3_model(model_source, self.store_config)
            dest = (
                self.work_dir
                / "uploaded-models"
                / model_files.s3_store_key(model_source, objects).split("/")[-1]
            )
            return model_files.fetch_s3(source, prefix, objects, dest)
        if not model_source.startswith("sha256:"):
            return resolve_model_source(model_source)
        digest = model_source.removeprefix("sha256:")
        manifest = model_files.parse_manifest(model_source, self.store.get_bytes(model_files.PREFIX + digest))
        return model_files.fetch(manifest, self.store.get_file, self.work_dir / "uploaded-models" / digest)

    async def __call__(self, job: ev.PrepareJob) -> None:
        from shared.llm.checkpoint import CheckpointError

        started = time.monotonic()
        try:
            if await asyncio.to_thread(self.store.dir_exists, job.model_key):
                info = json.loads(
                    await asyncio.to_thread(self.store.get_bytes, f"{job.model_key}/{MODEL_INFO}")
                )
            else:
                source = await asyncio.to_thread(self._source, job.model_source)
                info = await asyncio.to_thread(self._import, source, job.model_key)
                if job.model_source.startswith(
                    ("sha256:", "s3://")
                ):  # the store has the import now (a Hub model stays in its cache)
                    shutil.rmtree(self.work_dir / "uploaded-models", ignore_errors=True)
        except (ModelNotFound, CheckpointError, ArtifactNotFound) as exc:
            raise PermanentError(str(exc)) from exc
        await announce(
            self.bus,
            job,
            ev.PrepareDone,
            started,
            architecture=str(info.get("architecture", "")),
            num_parameters=int(info.get("num_parameters", 0)),
            max_position_embeddings=int(info.get("max_position_embeddings", 0) or 0),
        )


class TrainHandler:
    def __init__(
        self,
        bus: EventBus,
        store: ArtifactStore,
        checkpoints: CheckpointCache,
        cfg: TrainerConfig,
        device: str,
    ) -> None:
        self.bus, self.store, self.checkpoints = bus, store, checkpoints
        self.cfg, self.work_dir, self.device = cfg, cfg.work_dir, device
        self.verify_token = server_token(cfg.grpc)  # the services share one API token

    def _progress_callback(
        self, job: ev.TrainJob, loop: asyncio.AbstractEventLoop, tracker: MStepTracking
    ) -> Any:
        last = [0.0]
        cuda = self.device.startswith("cuda")

        def on_step(report: StepReport) -> None:
            abandon.check()  # called once per optimiser step: where a cancelled run's M-step stops
            metrics.record(report, cuda=cuda, peak_tflops=self.cfg.peak_tflops)
            tracker.log_step(report)
            now = time.monotonic()
            if report.step != report.total and now - last[0] < 1.0:
                return  # at most one progress event per second
            last[0] = now
            msg = ev.TrainProgress(
                run_id=job.run_id,
                job_id=job.job_id,
                iteration=job.iteration,
                step=report.step,
                total_steps=report.total,
                loss=report.loss,
            )
            coro = self.bus.publish_event(
                job.run_id,
                "train_progress",
                msg.SerializeToString(),
                msg_id=f"{job.job_id}.step{report.step}",
            )
            asyncio.run_coroutine_threadsafe(coro, loop)

        return on_step

    @staticmethod
    def _renderer(fmt: Any, tokenizer: Any) -> Any:
        from shared.llm.generation import render_prompt

        return lambda message: render_prompt(
            tokenizer, message, system=fmt.system_prompt or None, chat=fmt.chat_template
        )

    def _tokenize(self, job: ev.TrainJob, tokenizer: Any, scratch: Path, max_seq_len: int) -> Path:
        """Stream the kept set from the store into a tokenised set under ``scratch`` (never all in RAM)."""
        from shared.llm.dataset import read_chunks, write_tokenized
        from shared.llm.training import encode_example

        kept = scratch / "kept.jsonl"
        self.store.get_file(job.kept_key, kept)
        render = self._renderer(job.prompt_format, tokenizer)
        with kept.open("rb") as lines:
            chunks = (examples_from_kept(rows, render=render) for rows in read_chunks(lines))
            try:
                write_tokenized(
                    chunks, lambda ex: encode_example(tokenizer, ex), scratch / "data", max_seq_len
                )
            except ValueError as exc:
                if "no training examples" in str(exc):
                    raise ValueError(
                        f"kept set {job.kept_key} is empty; the coordinator skips the M-step in that case"
                    ) from exc
                raise
        kept.unlink()  # the tokenised copy is all training needs
        return scratch / "data"

    def _validation(self, job: ev.TrainJob, tokenizer: Any) -> dict[str, Any] | None:
        """The rendered validation split when the job asks for validation-driven stopping."""
        if not job.HasField("validation") or not job.validation.dataset_key:
            return None
        if not self.cfg.verifier_address:
            raise ValueError(
                "validation-driven stopping needs the verifier: set the trainer's verifier_address"
            )
        v = job.validation
        problems = loads_jsonl(self.store.get_bytes(v.dataset_key))
        if not problems:
            return None
        render = self._renderer(v.prompt_format, tokenizer)
        vset = ValidationSet.build(v.task, problems, render, from_proto(v.params, GenerationParams))
        return asdict(vset)

    def _spec(self, job: ev.TrainJob, base_dir: Path, scratch: Path, states: StepStates) -> MStepSpec:
        from shared.llm.checkpoint import load_tokenizer
        from shared.llm.training import pad_id_of

        params = from_proto(job.params, TrainParams)
        tokenizer = load_tokenizer(base_dir)
        data_dir = self._tokenize(job, tokenizer, scratch, params.max_seq_len)
        # A trainer killed mid-M-step left its last step state in the store: continue from it.
        resume = states.fetch_latest(scratch / "resume")
        return MStepSpec(
            base_dir=str(base_dir),
            data_dir=str(data_dir),
            params=as_dict(params),
            pad_id=pad_id_of(tokenizer),
            out_dir=str(scratch / "out" / "checkpoint"),
            scratch_dir=str(scratch / "states"),
            resume_dir=str(resume) if resume is not None else None,
            validation=self._validation(job, tokenizer),
        )

    def _run(self, job: ev.TrainJob, spec: MStepSpec, states: StepStates, on_step: Any) -> dict[str, Any]:
        s = self.cfg
        if s.nproc > 1:
            env = worker_settings(self.device, s.store, s.verifier_address, s.verify_timeout_s, s.sharding)
            if self.verify_token:
                env["RESTEM_TRAINER_VERIFY_TOKEN"] = self.verify_token
            return launch(spec, s.nproc, env, job.output_key, on_step)
        scorer = None
        if spec.validation is not None and s.verifier_address:
            scorer = grpc_scorer(
                s.verifier_address, spec.validation["task"], self.verify_token, s.verify_timeout_s
            )
        return execute(spec, self.device, scorer=scorer, on_step=on_step, on_state=states.commit)

    def _train(self, job: ev.TrainJob, base_dir: Path, on_step: Any) -> dict[str, Any]:
        states = StepStates(self.store, job.output_key)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.work_dir, prefix="mstep-") as tmp:
            spec = self._spec(job, base_dir, Path(tmp), states)
            stats = self._run(job, spec, states, on_step)
            if stats.get("resumed_from_step"):
                log.info("M-step %s resumed from step %d", job.job_id, stats["resumed_from_step"])
            summary = summary_dict(stats, base_key=job.base_key, kept_key=job.kept_key)
            out = Path(spec.out_dir)
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
            tracker = MStepTracking(job)
            succeeded = False
            try:
                base_dir = await self.checkpoints.fetch(job.base_key)
                on_step = self._progress_callback(job, asyncio.get_running_loop(), tracker)
                summary = await asyncio.to_thread(self._train, job, base_dir, on_step)
                succeeded = True
            except (ArtifactNotFound, CheckpointError, ValueError) as exc:
                raise PermanentError(str(exc)) from exc
            finally:
                await asyncio.to_thread(tracker.close, succeeded)
        await announce(
            self.bus,
            job,
            ev.TrainDone,
            checkpoint_key=job.output_key,
            steps=summary["steps"],
            examples=summary["examples"],
            tokens=summary["tokens"],
            loss_first=summary["loss_first"],
            loss_last=summary["loss_last"],
            seconds=summary["seconds"],
            validation_rewards=summary.get("validation_rewards", []),
            best_epoch=summary.get("best_epoch", 0),
            epochs=summary.get("epochs", 0),
        )
