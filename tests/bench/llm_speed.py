"""Sampling speed of the real SmolLM2-135M-Instruct in the reference ReST-EM setting (a script, not a test).

64 arithmetic prompts ("What is a + b?", a in 10..99, b in 1..9, seeded) × 8 samples, T 0.7, top-k 40,
at most 40 new tokens, stop regex ``The answer is -?\\d+\\.``. The reference single-process loop took 147 s
for this work on a 2-core CPU without stops.

    python tests/bench/llm_speed.py                          # imports the GGUF into a temp dir first
    python tests/bench/llm_speed.py --ckpt /tmp/smol --max-batch-sequences 64 128 512
    python tests/bench/llm_speed.py --ckpt /tmp/smol --no-stop   # without the stop regex
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.llm.checkpoint import import_checkpoint, load_for_inference, pick_device
from shared.llm.generation import GenerationParams, TransformersGenerator, render_prompt
from shared.models import resolve_model_source

ANSWER = re.compile(r"The answer is (-?\d+)\.")


def _problems(count: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(10, 99), rng.randint(1, 9)) for _ in range(count)]


def _run(ckpt: Path, args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    model, tokenizer = load_for_inference(ckpt, device)
    problems = _problems(args.prompts, args.seed)
    prompts = [
        render_prompt(tokenizer, f"What is {a} + {b}? End with 'The answer is N.'") for a, b in problems
    ]
    stops = () if args.no_stop else (ANSWER.pattern,)
    params = GenerationParams(
        n=args.n, temperature=0.7, top_k=40, max_new_tokens=40, stop_regex=stops, seed=args.seed
    )
    print(f"device {device}, torch threads {torch.get_num_threads()}, {len(prompts)} prompts x {args.n}")
    for max_seqs in args.max_batch_sequences:
        generator = TransformersGenerator(
            model,
            tokenizer,
            device=device,
            max_batch_sequences=max_seqs,
            max_batch_tokens=args.max_batch_tokens,
        )
        start = time.perf_counter()
        results = generator.generate(prompts, params)
        wall = time.perf_counter() - start
        flat = [c for per_prompt in results for c in per_prompt]
        kept = sum(c.num_tokens for c in flat)
        early = sum(c.finish_reason != "length" for c in flat) / len(flat)
        correct = sum(
            bool((m := ANSWER.search(c.text)) and int(m.group(1)) == a + b)
            for (a, b), per_prompt in zip(problems, results, strict=True)
            for c in per_prompt
        )
        print(
            f"max_batch_sequences {max_seqs:4d}: wall {wall:6.1f} s, {kept} kept tokens "
            f"({kept / wall:.0f} tokens/s), {len(flat) / wall:.2f} completions/s, "
            f"stopped early {early:.0%}, correct {correct}/{len(flat)}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", type=Path, help="an imported checkpoint dir (default: import the GGUF)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-batch-sequences", type=int, nargs="+", default=[512])
    parser.add_argument("--max-batch-tokens", type=int, default=65536)
    parser.add_argument(
        "--no-stop", action="store_true", help="no stop regex: the reference's work (EOS still stops)"
    )
    args = parser.parse_args()
    if args.ckpt is not None:
        _run(args.ckpt, args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        info = import_checkpoint(resolve_model_source("builtin:smollm2-135m-instruct"), Path(tmp) / "ckpt")
        print(
            f"imported {info['architecture']} ({info['num_parameters']:,} params) in {time.perf_counter() - start:.1f} s"
        )
        _run(Path(tmp) / "ckpt", args)


if __name__ == "__main__":
    main()
