"""A sampler replica whose backend only waits a fixed time per generated token (benchmarks only).

    python tests/bench/sim_sampler.py --config SAMPLER.yaml --token-latency-ms 1 --tokens 16

It is the real sampler service (work queue, heartbeats, idempotent writes, events, gRPC stats) with
`SimulatedFixedLatencyGenerator` in place of a model, so several replicas on a 2-core machine
measure the orchestration alone: the simulated generation sleeps and needs no CPU. It is
selectable only from here (the service config has no such backend), and GetStats reports it as
`simulated-fixed-latency` so no one mistakes its numbers for a model's. Prompts must be rendered
without a chat template (`prompt_format.chat_template: false`): there is no tokenizer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.llm.generation import Completion, GenerationParams  # noqa: E402

NAME = "simulated-fixed-latency"


class SimulatedFixedLatencyGenerator:
    """Sleeps `token_latency_s` per generated token, one sequence after another (no batching)."""

    backend = NAME
    tokenizer = None

    def __init__(self, token_latency_s: float, tokens_per_sample: int) -> None:
        self.token_latency_s = token_latency_s
        self.tokens_per_sample = tokens_per_sample

    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams,
        *,
        seeds: Sequence[Sequence[int]] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        """The text names each sample's seed, so tests can see which seed a sample was drawn with."""
        tokens = min(self.tokens_per_sample, params.max_new_tokens)
        time.sleep(len(prompts) * params.n * tokens * self.token_latency_s)
        if on_progress is not None:
            on_progress(len(prompts) * params.n)
        return [
            [
                Completion(
                    text=f"simulated {i}.{k}" if seeds is None else f"simulated seed {seeds[i][k]}",
                    num_tokens=tokens,
                    finish_reason="length",
                )
                for k in range(params.n)
            ]
            for i in range(len(prompts))
        ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True, help="sampler service config")
    parser.add_argument("--token-latency-ms", type=float, default=1.0, help="simulated time per token")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per simulated completion")
    args = parser.parse_args()
    from services.sampler.__main__ import main_async

    generator = SimulatedFixedLatencyGenerator(args.token_latency_ms / 1000, args.tokens)
    asyncio.run(main_async(args.config, (NAME, lambda path: generator)))


if __name__ == "__main__":
    main()
