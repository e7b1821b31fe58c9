"""RunService: the public API. Validates before anything starts; maps errors to gRPC statuses.

A new run gets a fresh id, so StartRun never overwrites stored data: the config and the datasets
are written under the new `runs/<run_id>/` before the run record exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import grpc
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.coordinator.v1 import coordinator_pb2_grpc as pb_grpc

from shared import keys, model_files
from shared.configio import ConfigError
from shared.errors import StatusError
from shared.grpc_server import abort_for
from shared.models import ModelNotFound, hub_id, hub_store_key, model_store_key, resolve_model_source
from shared.runconfig import RunConfig, parse_run_config
from shared.store import ArtifactNotFound, ArtifactStore
from shared.tasks import (
    DatasetError,
    build_splits,
    build_transfer_sets,
    dumps_jsonl,
    reference_subset,
    sft_rows,
)

from . import core, fork, job_records, lineage, reverify, snapshots, uploads
from .config import CoordinatorConfig
from .events import Orchestrator, RunNotFound
from .reconcile import reconcile_run

log = logging.getLogger("restem.coordinator.api")


def _put_dataset(store: ArtifactStore, run_id: str, split: str, problems: list[dict[str, Any]]) -> None:
    """The split's rows, and its ids on their own (the coordinator reads only those afterwards)."""
    store.put_bytes(keys.dataset_key(run_id, split), dumps_jsonl(problems))
    store.put_bytes(keys.dataset_ids_key(run_id, split), json.dumps([p["id"] for p in problems]).encode())


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort raises


def new_run_id(cfg: RunConfig) -> str:
    return f"{cfg.name or 'run'}-{secrets.token_hex(3)}"


class RunApi(pb_grpc.RunServiceServicer):
    def __init__(self, config: CoordinatorConfig, orchestrator: Orchestrator) -> None:
        self.config = config
        self.orc = orchestrator
        # Names of runs being started right now: two concurrent StartRuns with one name must not
        # both pass the check before either run record exists.
        self._starting: set[str] = set()
        self._name_lock = asyncio.Lock()

    async def _validated(
        self, request: pb.StartRunRequest, context: grpc.aio.ServicerContext
    ) -> tuple[RunConfig, Any, str]:
        if len(request.config_yaml.encode()) > self.config.max_config_bytes:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"config_yaml is larger than {self.config.max_config_bytes} bytes",
            )
        try:
            cfg = parse_run_config(request.config_yaml, source="config_yaml")
            model_key = await self._model_key(cfg.model.base)
        except (ConfigError, ModelNotFound) as exc:
            await abort_for(context, exc)
        return cfg, await self._splits(cfg, context), model_key

    async def _model_key(self, base: str) -> str:
        """Where the imported base model will live; ModelNotFound when it cannot be had."""
        if base.startswith("s3://"):
            _, _, objects = await asyncio.to_thread(model_files.s3_model, base, self.config.store)
            return model_files.s3_store_key(base, objects)
        hub = hub_id(base)
        if hub is not None:  # the trainer fetches it; the coordinator needs no access to the Hub
            return hub_store_key(*hub)
        if not base.startswith("sha256:"):
            return model_store_key(resolve_model_source(base))
        store = self.orc.store
        key = uploads.key_of(base)
        if key is None or not await asyncio.to_thread(store.exists, key):
            raise ModelNotFound(f"model.base: {base} is not in the store; `restem run` uploads a local model")
        manifest = model_files.parse_manifest(base, await asyncio.to_thread(store.get_bytes, key))
        missing = await asyncio.to_thread(model_files.missing_files, manifest, store.exists)
        if missing:
            raise ModelNotFound(
                f"model.base: {base} lacks {len(missing)} files in the store ({missing[:3]}); upload it again"
            )
        return model_files.store_key(base, manifest)

    async def _splits(self, cfg: RunConfig, context: grpc.aio.ServicerContext) -> Any:
        """The run's problems, read from its files (uploaded ones from local copies), checked line by line."""
        names: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="restem-files-") as tmp:
            try:
                local, names = await uploads.materialize(cfg, self.orc.store, self.config.store, Path(tmp))
                splits = await asyncio.to_thread(build_splits, local.task)
                splits.update(await asyncio.to_thread(build_transfer_sets, local.evaluation))
            except (DatasetError, StatusError) as exc:
                message = str(exc)
                for path, name in names.items():  # errors name the file as the config does
                    message = message.replace(path, name)
                await abort_for(context, exc, message=message)
        return splits

    async def UploadFile(
        self, request_iterator: AsyncIterator[pb.UploadFileRequest], context: grpc.aio.ServicerContext
    ) -> pb.UploadFileResponse:
        try:
            return await uploads.receive(request_iterator, self.orc.store, self.config.max_upload_bytes)
        except StatusError as exc:
            await abort_for(context, exc)

    async def StatFile(
        self, request: pb.StatFileRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatFileResponse:
        try:
            return await uploads.stat(self.orc.store, request.sha256)
        except StatusError as exc:
            await abort_for(context, exc)

    async def StartRun(
        self, request: pb.StartRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartRunResponse:
        if request.from_run:
            return await self._fork(request, context)
        cfg, splits, model_key = await self._validated(request, context)
        sft_train = None
        if cfg.baseline.sft:
            try:
                with_references = reference_subset(
                    splits["train"], cfg.baseline.sft_references, cfg.task.seed
                )
                sft_train = sft_rows(cfg.task.name, with_references)
            except DatasetError as exc:
                await abort_for(context, exc)
        if cfg.name is None:
            return await self._start(request, cfg, splits, model_key, sft_train)
        async with self._name_lock:
            holders = [o.run_id for o in await self._all_runs() if o.name == cfg.name]
            if cfg.name in self._starting:
                holders.append("being started now")
            if not holders:
                self._starting.add(cfg.name)
        if holders:
            await _abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"a run named '{cfg.name}' exists ({holders[0]}); choose another name",
            )
        try:
            return await self._start(request, cfg, splits, model_key, sft_train)
        finally:
            self._starting.discard(cfg.name)

    async def _start(
        self,
        request: pb.StartRunRequest,
        cfg: RunConfig,
        splits: Any,
        model_key: str,
        sft_train: Any,
    ) -> pb.StartRunResponse:
        run_id = new_run_id(cfg)
        store = self.orc.store
        await asyncio.to_thread(store.put_bytes, keys.config_key(run_id), request.config_yaml.encode())
        for split, problems in splits.items():
            # Serialised in the thread too: an APPS train set is hundreds of MB of JSON.
            await asyncio.to_thread(_put_dataset, store, run_id, split, problems)
        if sft_train is not None:
            data = await asyncio.to_thread(dumps_jsonl, sft_train)
            await asyncio.to_thread(store.put_bytes, f"{keys.sft_prefix(run_id)}/train.jsonl", data)
        run, decision = core.new_run(run_id, cfg, request.config_yaml, base_model_key=model_key)
        # The run exists before its first job is out: a worker that finishes at once (a model
        # already imported) sends an event that must find it. Recorded first, so a coordinator
        # that dies before publishing re-publishes them on restart.
        await job_records.record_jobs(store, decision.jobs)
        await self.orc.bus.runs.create(run_id, run.SerializeToString())
        await self.orc.snapshots.note(run)
        await self.orc.publish(decision)
        log.info(
            "run %s started: %s, %d train problems, %d iterations",
            run_id,
            cfg.task.name,
            len(splits["train"]),
            cfg.em.iterations,
        )
        return pb.StartRunResponse(run_id=run_id, run=run)

    async def _all_runs(self) -> list[pb.Run]:
        runs = [pb.Run.FromString(value) for _, value, _ in await self.orc.bus.runs.entries()]
        return sorted(runs, key=lambda r: r.created.ToNanoseconds())

    async def _get(self, run_id: str, context: grpc.aio.ServicerContext) -> pb.Run:
        try:
            keys.check_run_id(run_id)
            run, _ = await self.orc.load(run_id)
        except ValueError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except RunNotFound:
            await _abort(
                context, grpc.StatusCode.NOT_FOUND, f"no run '{run_id}'; `restem list` shows the runs"
            )
        return run

    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=await self._get(request.run_id, context))

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsResponse:
        runs = await self._all_runs()
        for r in runs:
            r.ClearField("config_yaml")  # listings stay small; GetRun has the config
        return pb.ListRunsResponse(runs=runs)

    async def CancelRun(
        self, request: pb.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelRunResponse:
        run = await self._get(request.run_id, context)
        if run.status in core.FINISHED:
            status = pb.RunStatus.Name(run.status).removeprefix("RUN_STATUS_").lower()
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"run {run.run_id} already finished ({status}); nothing to cancel",
            )

        def cancel(r: pb.Run, cfg: RunConfig, ids: dict[str, list[str]]) -> core.Decision:
            core.finish(r, pb.RUN_STATUS_CANCELLED, "cancelled by request")
            return core.Decision()

        run = await self.orc.mutate(run.run_id, cancel)
        purged = await self.orc.bus.purge_jobs(run.run_id)
        log.info("run %s cancelled; %d queued jobs purged", run.run_id, purged)
        return pb.CancelRunResponse(run=run)

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchRunResponse]:
        run = await self._get(request.run_id, context)
        yield pb.WatchRunResponse(run=run)
        if run.status in core.FINISHED and run.report_key:
            return
        # aclosing: stop the server-side watcher as soon as the run ends or the client leaves.
        async with contextlib.aclosing(self.orc.bus.runs.watch(request.run_id)) as updates:
            async for value, _ in updates:
                run = pb.Run.FromString(value)
                yield pb.WatchRunResponse(run=run)
                if run.status in core.FINISHED and run.report_key:
                    return

    async def GetReport(
        self, request: pb.GetReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReportResponse:
        run = await self._get(request.run_id, context)
        if not run.report_key:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"run {run.run_id} has not finished; its report is written at the end",
            )
        try:
            data = await asyncio.to_thread(self.orc.store.get_bytes, run.report_key)
        except ArtifactNotFound:
            await _abort(
                context, grpc.StatusCode.NOT_FOUND, f"report {run.report_key} is missing from the store"
            )
        report = json.loads(data)  # a corrupt report must not reach a client as if it were valid
        files = {}
        for name in report.get("files", []):
            files[name] = await asyncio.to_thread(self.orc.store.get_bytes, keys.report_key(run.run_id, name))
        return pb.GetReportResponse(report_json=data.decode(), report_key=run.report_key, files=files)

    async def GetLineage(
        self, request: pb.GetLineageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLineageResponse:
        run = await self._get(request.run_id, context)
        last = max((it.iteration for it in run.iterations), default=0)
        if request.iteration > last:
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"run {run.run_id} has iterations 0..{last}; iteration {request.iteration} does not exist",
            )
        doc = await asyncio.to_thread(lineage.build, self.orc.store, run, request.iteration)
        response = pb.GetLineageResponse(lineage_json=json.dumps(doc, indent=1))
        if request.check:
            mismatches, checked = await asyncio.to_thread(lineage.check, self.orc.store, doc)
            response.mismatches.extend(mismatches)
            response.artifacts_checked = checked
        return response

    async def RecoverRuns(
        self, request: pb.RecoverRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecoverRunsResponse:
        await self.orc.bus.ensure_topology()  # a NATS that lost its volume has no streams either
        recovered, present = await snapshots.recover(self.orc.store, self.orc.bus.runs)
        for run in recovered:
            if run.status not in core.FINISHED or not run.report_key:
                try:
                    await reconcile_run(self.orc, run.run_id)
                except Exception:  # the run is back; its events (or a coordinator restart) drive it
                    log.exception("recovered run %s could not be re-entered now", run.run_id)
        return pb.RecoverRunsResponse(recovered=recovered, present=present)

    async def ReverifyRun(
        self, request: pb.ReverifyRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReverifyRunResponse:
        run = await self._get(request.run_id, context)
        if request.iteration > max((it.iteration for it in run.iterations), default=0):
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"run {run.run_id} has no iteration {request.iteration}",
            )
        started: list[int] = []

        def begin(r: pb.Run, cfg: RunConfig, ids: Any) -> core.Decision:
            rv, _ = reverify.start(r, cfg, request.iteration)
            started.append(rv.number)
            return core.Decision()

        try:
            run = await self.orc.mutate(run.run_id, begin)
        except reverify.CannotReverify as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        # Published only once the run's stored state names the reverification: a verifier drops
        # the jobs of a finished run unless it does (`shared.worker.run_is_over`). A coordinator
        # that dies in between re-publishes them when it restarts (`reconcile`).
        await self.orc.publish(core.Decision(jobs=reverify.open_jobs(run, self.orc.config(run))))
        log.info("run %s: reverification %d started", run.run_id, started[-1])
        return pb.ReverifyRunResponse(run=run, number=started[-1])

    async def _fork(
        self, request: pb.StartRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartRunResponse:
        source = await self._get(request.from_run, context)
        source_cfg = self.orc.config(source)
        # Without a config the fork takes the source's, less its name (names are unique).
        config_yaml = request.config_yaml or fork.unnamed(source.config_yaml)
        try:
            cfg = parse_run_config(config_yaml, source="config_yaml")
            fork.check_config(source_cfg, cfg)
            if cfg.name and any(r.name == cfg.name for r in await self._all_runs()):
                raise fork.CannotFork(f"a run named '{cfg.name}' exists; give the fork a name of its own")
            run_id = new_run_id(cfg) if cfg.name else f"fork-{secrets.token_hex(3)}"
            run = fork.fork_run(
                source, run_id, cfg, config_yaml, request.from_iteration, request.from_reverification
            )
        except ConfigError as exc:
            await abort_for(context, exc)
        except fork.CannotFork as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        store = self.orc.store
        await asyncio.to_thread(store.put_bytes, keys.config_key(run_id), config_yaml.encode())
        await asyncio.to_thread(fork.copy_inputs, store, source.run_id, run_id)
        await self.orc.bus.runs.create(run_id, run.SerializeToString())
        await self.orc.snapshots.note(run)
        run = await self.orc.mutate(run_id, lambda r, c, i: core.Decision(needs_filter=True))
        log.info(
            "run %s forked from %s at iteration %d (reverification %d)",
            run_id, source.run_id, request.from_iteration, run.forked_reverification,
        )  # fmt: skip
        return pb.StartRunResponse(run_id=run_id, run=run)
