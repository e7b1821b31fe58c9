"""Services vs one process: the same small ReST-EM run both ways, same model, seeds and sizes.

    python tests/bench/bench_e2e.py [--config FILE]      (make bench)

The one-process baseline calls the same library code the services call (model import, batched
generation with the same per-sample seeds and shard plan, the same checker and filter, the same
trainer with the same validation-driven stopping, scored in process), with no NATS, no object store
and no process boundaries, keeping models in memory. Both include the base model's import (the stack
gets an empty conversion cache). It prints both wall times, their ratio, the per-phase times
of each, and whether both runs kept the same samples (they should: same seeds, same batches).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.logs import quiet_model_libraries  # noqa: E402

DEFAULT = ROOT / "examples" / "arithmetic-demo.yaml"


def one_process(config_yaml: str, work: Path) -> tuple[float, dict[str, float], list[int]]:
    from services.coordinator import core, filtering
    from shared.llm.checkpoint import import_checkpoint, load_for_inference, load_for_training
    from shared.llm.generation import TransformersGenerator, render_prompt
    from shared.llm.training import Hooks, TrainExample, pad_id_of, tokenize_examples, train_features
    from shared.models import resolve_model_source
    from shared.params import GenerationParams, TrainParams, from_proto
    from shared.runconfig import parse_run_config
    from shared.seeds import derive_seed, sample_seeds
    from shared.tasks import build_splits, check_answer, stop_patterns, user_message

    cfg = parse_run_config(config_yaml)
    phases: dict[str, float] = defaultdict(float)
    kept_counts = []
    t0 = time.monotonic()
    import_checkpoint(resolve_model_source(cfg.model.base), work / "base")
    splits = build_splits(cfg.task)
    model, tok = load_for_inference(work / "base", "cpu")
    phases["preparing"] += time.monotonic() - t0
    stops = tuple(stop_patterns(cfg.task.name))

    def evaluate(gen: TransformersGenerator) -> None:
        t = time.monotonic()
        greedy = GenerationParams(
            n=1, greedy=True, max_new_tokens=cfg.sampling.max_new_tokens, stop_regex=stops
        )
        for split in cfg.evaluation.splits:
            problems = sorted(splits[split], key=lambda p: p["id"])
            prompts = [render_prompt(tok, user_message(cfg.task.name, p)) for p in problems]
            outs = gen.generate(prompts, greedy)
            [check_answer(cfg.task.name, p["answer"], o[0].text) for p, o in zip(problems, outs, strict=True)]
        phases["evaluating"] += time.monotonic() - t

    gen = TransformersGenerator(model, tok, device="cpu")
    evaluate(gen)
    for it in range(1, cfg.em.iterations + 1):
        t = time.monotonic()
        samples, verdicts = [], []
        shards = core.plan_shards([p["id"] for p in splits["train"]], cfg.em.shard_size)
        by_id = {p["id"]: p for p in splits["train"]}
        for index, ids in enumerate(shards):
            sent = job_params(cfg, it, index)  # what the coordinator would send
            params = from_proto(sent, GenerationParams)
            seeds = sample_seeds(sent.seed, ids, params.n)  # what the sampler draws with
            problems = [by_id[i] for i in ids]
            prompts = [render_prompt(tok, user_message(cfg.task.name, p)) for p in problems]
            for p, prompt, outs in zip(
                problems, prompts, gen.generate(prompts, params, seeds=seeds), strict=True
            ):
                for k, c in enumerate(outs):
                    sid = f"i{it}/{p['id']}/{k}"
                    samples.append(
                        {"sample_id": sid, "problem_id": p["id"], "prompt": prompt, "completion": c.text}
                    )
                    verdicts.append(
                        {
                            "sample_id": sid,
                            "correct": check_answer(cfg.task.name, p["answer"], c.text).correct,
                        }
                    )
        phases["sampling+verifying"] += time.monotonic() - t
        t = time.monotonic()
        kept, _ = filtering.select_kept(
            samples,
            verdicts,
            problem_ids=list(by_id),
            cutoff=cfg.em.cutoff,
            seed=derive_seed(cfg.sampling.seed, it),
        )
        kept_counts.append(len(kept))

        tmodel, ttok = load_for_training(work / "base", "cpu")
        examples = [TrainExample(k["prompt"], k["completion"], 1.0) for k in kept]
        if examples:
            params = from_proto(core.train_params_for(cfg, it), TrainParams)
            hooks = Hooks(validate=validator(cfg, splits["validation"], tmodel, ttok), scratch_dir=work)
            train_features(
                tmodel,
                tokenize_examples(ttok, examples, params.max_seq_len),
                params,
                pad_id=pad_id_of(ttok),
                device="cpu",
                hooks=hooks,
            )
        tmodel.eval()
        phases["training"] += time.monotonic() - t
        gen = TransformersGenerator(tmodel, tok, device="cpu")
        evaluate(gen)
    return time.monotonic() - t0, dict(phases), kept_counts


def validator(cfg, problems, model, tokenizer):  # type: ignore[no-untyped-def]
    """The trainer's validation-driven stopping, scored in process: the job the coordinator would
    send (None when the run does not ask for it), decoded with the trainer's own validator."""
    from restem.coordinator.v1 import coordinator_pb2 as pb

    from services.coordinator import jobs
    from services.trainer.validation import ValidationSet, make_validator
    from shared.llm.generation import render_prompt
    from shared.params import GenerationParams, from_proto
    from shared.tasks import check_answer

    job = jobs.train_validation(pb.Run(run_id="bench-000000"), cfg, cfg.evaluation.splits)
    if job is None or not problems:
        return None
    vset = ValidationSet.build(
        cfg.task.name,
        problems,
        lambda m: render_prompt(tokenizer, m),
        from_proto(job.params, GenerationParams),
    )

    def score(references, completions):  # type: ignore[no-untyped-def]
        return [
            check_answer(cfg.task.name, json.loads(r), c).correct
            for r, c in zip(references, completions, strict=True)
        ]

    return make_validator(model, tokenizer, "cpu", vset, score)


def job_params(cfg, iteration, index):  # type: ignore[no-untyped-def]
    from restem.coordinator.v1 import coordinator_pb2 as pb

    from services.coordinator import core

    run = pb.Run(run_id="bench-000000")
    it = run.iterations.add(iteration=iteration, policy_key="x")
    return core.sample_job(run, cfg, it, index, []).message.params


def through_services(config_yaml: str, state: Path) -> tuple[float, dict[str, float], list[int], float]:
    from shared.client.client import RunClient
    from shared.client.stack import down, up

    # An empty conversion cache: the services convert the base model as the one process does.
    os.environ["XDG_CACHE_HOME"] = str(state / "user-cache")
    t_up = time.monotonic()
    stack = up(state)
    up_s = time.monotonic() - t_up
    try:
        t0 = time.monotonic()
        with RunClient(stack.coordinator) as client:
            run = client.start_run(config_yaml)
            for _ in client.watch_run(run.run_id, timeout_s=3600):
                pass  # follow until the run ends
            report = client.report(run.run_id)
        wall = time.monotonic() - t0
    finally:
        down(state)
    if report["status"] != "succeeded":
        raise SystemExit(f"the services run did not succeed: {report['error']}")
    phases: dict[str, float] = defaultdict(float)
    for r in report["iterations"]:
        for k, v in r["phase_seconds"].items():
            phases[k] += v
    phases["preparing"] = wall - sum(r["seconds"] for r in report["iterations"])
    return wall, dict(phases), [r["kept"] for r in report["iterations"][1:]], up_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=DEFAULT, help="run config (default: the demo's)")
    args = parser.parse_args()
    quiet_model_libraries()
    config_yaml = args.config.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        print("one process ...", flush=True)
        base_s, base_phases, base_kept = one_process(config_yaml, Path(tmp) / "one")
        print("through the services (local stack) ...", flush=True)
        svc_s, svc_phases, svc_kept, up_s = through_services(config_yaml, Path(tmp) / "stack")
    print()
    print(
        f"one process:        {base_s:7.1f} s   "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(base_phases.items()))
    )
    print(
        f"through services:   {svc_s:7.1f} s   "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(svc_phases.items()))
    )
    print(f"(stack start-up, not counted: {up_s:.1f} s)")
    print(f"ratio services / one process: {svc_s / base_s:.2f}")
    print(
        f"kept samples per iteration: one process {base_kept}, services {svc_kept}"
        + (" (identical)" if base_kept == svc_kept else " (DIFFERENT)")
    )


if __name__ == "__main__":
    main()
