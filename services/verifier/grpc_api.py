"""VerifierService: direct scoring of completions (the evaluator uses it) and worker stats, with the
verdict cache's hits and misses and the checks this replica actually ran."""

from __future__ import annotations

import json
from collections import OrderedDict, defaultdict
from typing import Any

import grpc
from restem.verifier.v1 import verifier_pb2, verifier_pb2_grpc

from shared.grpc_server import abort_for
from shared.tasks import TASKS_WITH_CHECKERS, Verdict
from shared.worker import WorkerState

from .checkers import BadProblem, Checkers, SandboxUnavailable
from .config import VerifierConfig

REFERENCE_CACHE_BYTES = 16 * 1024 * 1024
"""Reference JSON kept parsed across requests (a client sends a problem's K samples in several)."""


class VerifierApi(verifier_pb2_grpc.VerifierServiceServicer):
    def __init__(self, config: VerifierConfig, state: WorkerState, checkers: Checkers) -> None:
        self.config = config
        self.state = state
        self.checkers = checkers
        # The same parsed object for the same JSON: Checkers then finds the problem by identity
        # instead of re-serialising and hashing it (APPS references can be megabytes).
        self._references: OrderedDict[str, Any] = OrderedDict()
        self._reference_bytes = 0

    def _reference(self, text: str) -> Any:
        """The parsed reference; raises json.JSONDecodeError."""
        hit = self._references.get(text)
        if hit is not None:
            self._references.move_to_end(text)
            return hit
        value = json.loads(text)
        if len(text) <= REFERENCE_CACHE_BYTES // 4:
            self._references[text] = value
            self._reference_bytes += len(text)
            while self._reference_bytes > REFERENCE_CACHE_BYTES:
                old, _ = self._references.popitem(last=False)
                self._reference_bytes -= len(old)
        return value

    async def _parse(
        self, request: verifier_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> dict[str, list[tuple[int, Any, str]]]:
        """Items grouped by task as (index, reference, completion); aborts on a malformed item."""
        by_task: dict[str, list[tuple[int, Any, str]]] = defaultdict(list)
        for i, item in enumerate(request.items):
            if item.task not in TASKS_WITH_CHECKERS:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"items[{i}].task '{item.task}' has no checker; use one of {', '.join(TASKS_WITH_CHECKERS)}",
                )
            try:
                # The samples of one problem share one reference object, within and across requests.
                reference = self._reference(item.reference_json)
            except json.JSONDecodeError:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"items[{i}].reference_json is not valid JSON"
                )
            by_task[item.task].append((i, reference, item.completion))
        return by_task

    async def Verify(
        self, request: verifier_pb2.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.VerifyResponse:
        if len(request.items) > self.config.max_items_per_request:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(request.items)} items in one request; send at most {self.config.max_items_per_request}",
            )
        verdicts: list[Verdict | None] = [None] * len(request.items)
        for task, items in (await self._parse(request, context)).items():
            try:
                got = await self.checkers.check_many(task, [(ref, c) for _, ref, c in items])
            except BadProblem as exc:
                await abort_for(context, exc, f"a {task} reference is not a usable problem: ")
            except SandboxUnavailable as exc:
                await abort_for(context, exc, "retry later: ")
            for (i, _, _), v in zip(items, got, strict=True):
                verdicts[i] = v
        return verifier_pb2.VerifyResponse(
            verdicts=[
                verifier_pb2.Verdict(
                    correct=v.correct,
                    extracted=v.extracted,
                    rule=v.rule,
                    checker_version=v.checker_version,
                    detail=v.detail,
                )
                for v in verdicts
                if v is not None
            ]
        )

    async def GetStats(
        self, request: verifier_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> verifier_pb2.GetStatsResponse:
        stats = self.state.to_proto()
        cache = self.checkers.verdicts.totals()
        stats.cache_hits, stats.cache_misses, stats.checks_run = cache.hits, cache.misses, cache.checks_run
        return verifier_pb2.GetStatsResponse(stats=stats)
