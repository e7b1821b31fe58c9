"""Record real model samples for `make bench-verifier`'s E-step mix (run once; the file is committed).

    python tests/bench/record_verifier_samples.py [--k 8] [--out tests/bench/data/verifier_samples.jsonl.gz]

What it records is what one ReST-EM E-step hands the verifier: K samples of every problem from the
built-in SmolLM2-135M-Instruct, drawn by restem's own transformers backend with the run config's
sampling defaults for code tasks (temperature 0.7, top-k 40, 512 new tokens, stopped after the
first closed ```python block), the sampler's chat prompts and its per-sample seeds. Problems: the
164 HumanEval problems and the bench's 40 APPS-style stdin problems (statements written below for
its four templates). Each line is one sample: family, problem id, sample index, seed, completion,
token count and finish reason; stdin lines carry their problem (statement and tests) so the bench
grades exactly what was sampled. ~30 min on 2 CPU cores (1795 s for the committed file).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_verifier import STDIN_STATEMENTS, stdin_problems  # noqa: E402

DEFAULT_OUT = ROOT / "tests" / "bench" / "data" / "verifier_samples.jsonl.gz"
SEED = 20261125


def problems() -> list[tuple[str, dict[str, Any]]]:
    from shared.tasks.datasets import load_problems

    out: list[tuple[str, dict[str, Any]]] = [
        ("humaneval", p) for p in load_problems("builtin:humaneval", "humaneval")
    ]
    for problem, _, _ in stdin_problems(40, random.Random(0)):
        name = problem["id"].split("-")[0]
        row = {"id": problem["id"], "question": STDIN_STATEMENTS[name], "answer": problem, "kind": "stdin"}
        out.append(("apps", row))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--limit", type=int, default=0, help="first N problems of each family only (a quick look)"
    )
    args = ap.parse_args()

    import tempfile

    from services.sampler.core import render_prompts
    from shared.llm.checkpoint import import_checkpoint, load_for_inference
    from shared.llm.generation import GenerationParams, TransformersGenerator
    from shared.models import resolve_model_source
    from shared.runconfig import RunConfig
    from shared.seeds import sample_seeds
    from shared.tasks.prompts import stop_patterns

    todo = problems()
    with tempfile.TemporaryDirectory() as tmp:
        import_checkpoint(resolve_model_source(RunConfig().model.base), Path(tmp) / "base")
        model, tok = load_for_inference(Path(tmp) / "base", "cpu")
    gen = TransformersGenerator(model, tok, device="cpu")
    files = {"train": "builtin:humaneval", "test": "builtin:humaneval"}
    defaults = RunConfig.model_validate({"task": {"name": "humaneval", "files": files}})
    params = GenerationParams(
        n=args.k,
        temperature=defaults.sampling.temperature,
        top_k=defaults.sampling.top_k,
        top_p=defaults.sampling.top_p,
        max_new_tokens=defaults.sampling.max_new_tokens,
        stop_regex=tuple(stop_patterns("humaneval")),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start, rows = time.monotonic(), []
    for family in ("humaneval", "apps"):
        batch = [p for f, p in todo if f == family][: args.limit or None]
        if not batch:
            continue
        prompts = render_prompts(tok, family, batch, chat=True, system=None)
        seeds = sample_seeds(SEED, [p["id"] for p in batch], args.k, 0)
        outs = gen.generate(
            prompts,
            params,
            seeds=seeds,
            on_progress=lambda n, f=family: print(f"  {f}: {n} samples", flush=True),
        )
        for p, pseeds, completions in zip(batch, seeds, outs, strict=True):
            for index, (seed, c) in enumerate(zip(pseeds, completions, strict=True)):
                row = {"family": family, "problem_id": p["id"], "index": index, "seed": seed,
                       "completion": c.text, "num_tokens": c.num_tokens, "finish_reason": c.finish_reason}  # fmt: skip
                if family == "apps":
                    row["problem"] = {**p["answer"], "question": p["question"]}
                rows.append(row)
    header = {"model": defaults.model.base, "k": args.k, "seed": SEED, "temperature": params.temperature,
              "top_k": params.top_k, "top_p": params.top_p, "max_new_tokens": params.max_new_tokens,
              "seconds": round(time.monotonic() - start, 1), "samples": len(rows)}  # fmt: skip
    with gzip.open(args.out, "wt") as f:
        f.write(json.dumps({"header": header}) + "\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(
        f"{args.out}: {len(rows)} samples, {sum(r['num_tokens'] for r in rows)} tokens, {header['seconds']} s"
    )


if __name__ == "__main__":
    main()
