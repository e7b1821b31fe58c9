"""Each sampling and training setting is declared once and reaches the code that uses it.

The cases are generated from the models (the run config's sections, the GenerationParams /
TrainParams dataclasses, the contract messages), not listed by hand: a field added to the run config
without a way to its consumer fails here. A run-config field that is not a dataclass field of the
same name must be one of the few consumed elsewhere, each with its own check below.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel
from restem.common.v1 import common_pb2
from restem.coordinator.v1 import coordinator_pb2 as pb
from restem.events.v1 import events_pb2 as ev

from services.coordinator import jobs
from services.trainer.mstep import MStepSpec, train_params
from shared.params import GenerationParams, TrainParams, as_dict, from_proto, to_proto
from shared.runconfig import LoraConfig, RunConfig, SamplingConfig, TrainingConfig

# A base that every single-field change keeps valid (min_lr_ratio needs a decaying schedule, the
# LoRA fields need method lora).
BASE = {"training": {"method": "lora", "lr_schedule": "cosine"}}


def _default(cls: type, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def _other_value(annotation: Any, current: Any) -> Any:
    """A valid value of `annotation` different from `current`."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return _other_value(next(a for a in get_args(annotation) if a is not type(None)), current)
    if origin is Literal:
        return next(v for v in get_args(annotation) if v != current)
    if origin is list:
        return ["q_proj"] if current != ["q_proj"] else ["v_proj"]
    if annotation is bool:
        return not current
    if annotation is int:
        return 2 if current in (None, 0, 1) else current + 2  # 2 divides the default batch of 8
    if annotation is float:
        return 0.25 if current != 0.25 else 0.5
    raise AssertionError(f"no test value for {annotation!r}: extend _other_value")


def _hints(model: type[BaseModel]) -> dict[str, Any]:
    import shared.runconfig as rc

    return typing.get_type_hints(model, vars(rc))


def _config(section: str, path: list[str], value: Any) -> RunConfig:
    doc: dict[str, Any] = json.loads(json.dumps(BASE))
    node = doc.setdefault(section, {})
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return RunConfig.model_validate(doc)


def _sampler_sees(cfg: RunConfig) -> GenerationParams:
    """The GenerationParams the sampler builds from the coordinator's first sample job, as it does."""
    run = pb.Run(run_id="run-abcdef")
    it = pb.Iteration(iteration=1, policy_key="runs/run-abcdef/base")
    job = jobs.sample_job(run, cfg, it, 0, ["p0"], k=cfg.sampling.n).message
    wire = ev.SampleJob.FromString(job.SerializeToString())
    return from_proto(wire.params, GenerationParams)


def _trainer_sees(cfg: RunConfig, tmp: Path) -> TrainParams:
    """The TrainParams the M-step trains with: the coordinator's job, over the wire, through the spec file."""
    job = ev.TrainJob(params=jobs.train_params_for(cfg, 1))
    wire = ev.TrainJob.FromString(job.SerializeToString())
    spec = MStepSpec(
        base_dir="b",
        data_dir="d",
        params=as_dict(from_proto(wire.params, TrainParams)),
        pad_id=0,
        out_dir="o",
        scratch_dir="s",
    )
    spec.dump(tmp / "spec.json")
    return train_params(MStepSpec.load(tmp / "spec.json"))


def _leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[list[str], str, Any]]:
    """(path in the section, dataclass field name, annotation) of every leaf field of a section."""
    out = []
    for name, annotation in _hints(model).items():
        if name.startswith("_") or name not in model.model_fields:
            continue
        inner = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        nested = (
            inner[0]
            if inner
            else annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
        if nested is LoraConfig:
            out += [([name, *p], f"lora_{d}", a) for p, d, a in _leaves(nested)]
        elif nested is None:
            out.append(([name], prefix + name, annotation))
    return out


# Run-config fields that are not dataclass fields, and where each one goes instead.
ELSEWHERE: dict[str, Any] = {
    "sampling.adaptive": "rounds of sample jobs: tests/unit/test_adaptive.py",
    "training.validation_stopping": "the TrainJob's validation section: checked below",
}
# Dataclass fields that no run-config field sets, and who sets them.
DERIVED = {
    GenerationParams: {"stop_regex": "the task's answer pattern", "greedy": "evaluation and validation"},
    TrainParams: {"save_dtype": "model.dtype: checked below"},
}
SECTIONS = [("sampling", SamplingConfig, GenerationParams), ("training", TrainingConfig, TrainParams)]


@pytest.mark.parametrize(("section", "model", "params_cls"), SECTIONS)
def test_every_field_has_one_default_and_a_contract_field(
    section: str, model: type[BaseModel], params_cls: type
) -> None:
    message = {GenerationParams: common_pb2.SamplingParams, TrainParams: common_pb2.TrainParams}[params_cls]
    assert {f.name for f in fields(params_cls)} == set(message.DESCRIPTOR.fields_by_name)
    names = {f.name for f in fields(params_cls)}
    defaults = getattr(RunConfig(), section)
    covered = set()
    for path, target, _annotation in _leaves(model):
        key = ".".join([section, *path])
        if key in ELSEWHERE:
            continue
        assert target in names, (
            f"{key} has no field {target!r} in {params_cls.__name__}: add it there and to the proto, or say in ELSEWHERE where it goes"
        )
        covered.add(target)
        value: Any = defaults
        for p in path:
            value = getattr(value, p) if value is not None else None
        if value is None and path[0] == "lora":
            value = getattr(LoraConfig(), path[1])
        if key == "sampling.n":
            continue  # a run draws K per problem; one generate call draws one unless told
        expected = _default(params_cls, target)
        assert (tuple(value) if isinstance(value, list) else value) == expected, (
            f"{key} defaults differ from {params_cls.__name__}.{target}"
        )
    assert names - covered == set(DERIVED[params_cls]), "a dataclass field no run-config field sets"


@pytest.mark.parametrize(
    ("section", "path", "target", "annotation"),
    [(s, p, t, a) for s, m, _ in SECTIONS for p, t, a in _leaves(m) if ".".join([s, *p]) not in ELSEWHERE],
    ids=lambda v: ".".join(v) if isinstance(v, list) else None,
)
def test_every_field_reaches_its_consumer(
    section: str, path: list[str], target: str, annotation: Any, tmp_path: Path
) -> None:
    base = _config(section, ["seed"] if section == "sampling" else ["epochs"], _other_value(int, 0))
    node: Any = getattr(base, section)
    for p in path:
        node = getattr(node, p) if node is not None else None
    value = _other_value(annotation, node)
    cfg = _config(section, path, value)
    seen = _sampler_sees if section == "sampling" else lambda c: _trainer_sees(c, tmp_path)
    before, after = getattr(seen(base), target), getattr(seen(cfg), target)
    if target == "seed":
        assert after != before  # the iteration's seed is derived from it
    elif isinstance(value, float):
        assert after == pytest.approx(value, rel=1e-6)  # SamplingParams carries 32-bit floats
    else:
        assert after == (tuple(value) if isinstance(value, list) else value)


def test_validation_stopping_decides_the_jobs_validation_section() -> None:
    run = pb.Run(run_id="run-abcdef")
    on = jobs.train_validation(run, RunConfig(), {"validation": 32, "test": 64})
    off = jobs.train_validation(
        run, _config("training", ["validation_stopping"], False), {"validation": 32, "test": 64}
    )
    assert on is not None and on.dataset_key.endswith("validation.jsonl") and off is None


def test_the_model_dtype_reaches_the_trainer(tmp_path: Path) -> None:
    assert RunConfig().model.dtype == TrainParams().save_dtype
    assert (
        _trainer_sees(RunConfig.model_validate({"model": {"dtype": "bfloat16"}}), tmp_path).save_dtype
        == "bfloat16"
    )


def test_unset_contract_fields_decode_to_the_defaults_and_zero_stays_zero() -> None:
    assert from_proto(common_pb2.TrainParams(), TrainParams) == TrainParams()
    assert from_proto(common_pb2.SamplingParams(), GenerationParams) == GenerationParams()
    explicit = GenerationParams(top_k=0, seed=0, stop=("\n",), temperature=0.5)  # 0.5: exact in 32 bits
    assert from_proto(to_proto(explicit, common_pb2.SamplingParams), GenerationParams) == explicit
    no_clip = TrainParams(max_grad_norm=0.0, max_steps=None)
    message = to_proto(no_clip, common_pb2.TrainParams)
    assert not message.HasField("max_steps") and message.HasField("max_grad_norm")
    assert from_proto(message, TrainParams) == no_clip
