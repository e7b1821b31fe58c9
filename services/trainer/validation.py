"""The validation reward of the model being trained: greedy answers on the validation split, scored by the verifier.

``make_validator`` returns the ``training.Hooks.validate`` callback: it decodes the validation prompts
greedily with the model in memory (``generation.TransformersGenerator``: the evaluator's decode loop
and settings, so the reward is the pass@1 the evaluator would report) and asks a ``Scorer`` which
answers are correct. The real scorer is the verifier's ``Verify`` gRPC API (``grpc_scorer``), exactly
as the evaluator calls it; tests pass a fake one. In a data-parallel run each rank decodes every
``world``-th prompt and the counts are summed, so every rank gets the same reward and stops together.
With sharded weights (``sharding: fsdp``) the training loop calls the callback with the whole model
gathered on every rank (``distributed.unsharded``), so the ranks' decoding needs no collective
however many forward passes each makes; the summed counts are the callback's only collective.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.params import GenerationParams, as_dict, from_dict

if TYPE_CHECKING:
    from shared.llm.distributed import DataParallel

# (reference answers as JSON, completions) -> correct?, one per pair
Scorer = Callable[[Sequence[str], Sequence[str]], list[bool]]
VERIFY_BATCH = 512


@dataclass(frozen=True)
class ValidationSet:
    task: str
    prompts: list[str]  # rendered exactly as the evaluator renders them
    references: list[str]  # each problem's answer, JSON (the verifier's reference_json)
    params: dict[str, Any]  # shared.params.as_dict of the (greedy) GenerationParams

    @staticmethod
    def build(
        task: str, problems: Sequence[dict[str, Any]], render: Callable[[str], str], params: GenerationParams
    ) -> ValidationSet:
        from shared.tasks import user_message

        ordered = sorted(problems, key=lambda p: p["id"])
        return ValidationSet(
            task=task,
            prompts=[render(user_message(task, p)) for p in ordered],
            references=[json.dumps(p["answer"]) for p in ordered],
            params=as_dict(params),
        )


def grpc_scorer(address: str, task: str, token: str | None, timeout_s: float) -> Scorer:
    """A scorer that calls the verifier's Verify RPC (blocking; the training loop runs in a thread)."""
    import grpc
    from restem.verifier.v1 import verifier_pb2, verifier_pb2_grpc

    from shared.auth import SPREAD_OPTIONS, metadata

    def score(references: Sequence[str], completions: Sequence[str]) -> list[bool]:
        correct: list[bool] = []
        with grpc.insecure_channel(address, options=SPREAD_OPTIONS) as channel:
            stub = verifier_pb2_grpc.VerifierServiceStub(channel)
            for start in range(0, len(references), VERIFY_BATCH):
                items = [
                    verifier_pb2.VerifyItem(task=task, reference_json=r, completion=c)
                    for r, c in zip(
                        references[start : start + VERIFY_BATCH],
                        completions[start : start + VERIFY_BATCH],
                        strict=True,
                    )
                ]
                resp = stub.Verify(
                    verifier_pb2.VerifyRequest(items=items), timeout=timeout_s, metadata=metadata(token)
                )
                correct += [v.correct for v in resp.verdicts]
        return correct

    return score


def make_validator(
    model: Any,
    tokenizer: Any,
    device: str,
    vset: ValidationSet,
    scorer: Scorer,
    dp: DataParallel | None = None,
) -> Callable[[], float]:
    """The validation reward (fraction correct, greedy) of ``model`` as it is when called."""
    from shared.llm.generation import TransformersGenerator

    generator = TransformersGenerator(model, tokenizer, device=device)
    params = from_dict(vset.params, GenerationParams)
    rank, world = (dp.rank, dp.world) if dp is not None else (0, 1)
    mine = list(range(rank, len(vset.prompts), world))

    def validate() -> float:
        correct = 0
        if mine:
            outs = generator.generate([vset.prompts[i] for i in mine], params)
            verdicts = scorer([vset.references[i] for i in mine], [o[0].text for o in outs])
            correct = sum(1 for v in verdicts if v)
        total = len(mine)
        if dp is not None:
            correct, total = (int(x) for x in dp.sum([correct, total], device))
        return correct / total if total else 0.0

    return validate
