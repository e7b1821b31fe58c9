"""Two model processes on one machine: a training loop and a greedy decode, alone and side by side,
with OpenMP's default waiting, a short spin and passive waiting (`make bench-contention`, ~12 min
on 2 cores).

Why: the local stack runs the sampler, trainer and evaluator as processes on the same cores, and
their phases overlap (an evaluation beside the next E-step and the SFT M-step). Each process uses a
thread per core; the question is what the idle threads' wait policy costs when they share.
`shared.client.stack.service_env` starts services with `GOMP_SPINCOUNT=10000` because of it.

Workloads (SmolLM2-135M-Instruct, fp32, every core): `train` runs AdamW steps on 2 x 400 random
tokens for a fixed time (tokens/s); `decode` greedily completes the first 20 HumanEval test-split
prompts to 128 new tokens (seconds). Side by side, `decode` starts once `train` is stepping.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TRAIN_S = 60.0
PROMPTS = 20
NEW_TOKENS = 128


def _model():  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.logs import quiet_model_libraries
    from shared.models import resolve_model_source

    quiet_model_libraries()
    src = resolve_model_source("builtin:smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    return model, tok


def train(seconds: float, ready: Path | None) -> dict[str, float]:
    import torch

    model, _ = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, 40000, (2, 400), generator=torch.Generator().manual_seed(0))
    started, steps = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        steps += 1
        if ready is not None and steps == 1:
            ready.touch()
    return {"tokens_per_s": steps * ids.numel() / (time.monotonic() - started)}


def decode() -> dict[str, float]:
    from shared.llm.generation import TransformersGenerator, render_prompt
    from shared.params import GenerationParams
    from shared.tasks.prompts import stop_patterns, user_message

    model, tok = _model()
    rows = [json.loads(line) for line in (ROOT / "examples/data/humaneval-test.jsonl").open()][:PROMPTS]
    prompts = [render_prompt(tok, user_message("humaneval", {"question": r["prompt"]})) for r in rows]
    params = GenerationParams(
        greedy=True, max_new_tokens=NEW_TOKENS, stop_regex=tuple(stop_patterns("humaneval"))
    )
    gen = TransformersGenerator(model, tok, device="cpu")
    started = time.monotonic()
    gen.generate(prompts, params)
    return {"seconds": time.monotonic() - started}


def _worker(kind: str, env: dict[str, str], ready: Path | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "worker", kind]
    if ready is not None:
        cmd += ["--ready", str(ready)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"worker failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


# name -> the OpenMP wait settings a worker runs with (libgomp: spin 300,000 times, then sleep, by default)
POLICIES: dict[str, dict[str, str]] = {
    "default (spin, then sleep)": {},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def measure(policy: dict[str, str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(policy)
    alone_train = _result(_worker("train", env))["tokens_per_s"]
    alone_decode = _result(_worker("decode", env))["seconds"]
    ready = ROOT / ".restem" / "bench-contention.ready"
    ready.parent.mkdir(exist_ok=True)
    ready.unlink(missing_ok=True)
    trainer = _worker("train", env, ready)
    while not ready.exists() and trainer.poll() is None:
        time.sleep(0.2)
    side_decode = _result(_worker("decode", env))["seconds"]
    side_train = _result(trainer)["tokens_per_s"]  # its window is mostly, not only, side by side
    ready.unlink(missing_ok=True)
    return {
        "train": alone_train,
        "decode": alone_decode,
        "train_side": side_train,
        "decode_side": side_decode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=["run", "worker"], default="run")
    parser.add_argument("kind", nargs="?", choices=["train", "decode"])
    parser.add_argument("--ready", type=Path)
    args = parser.parse_args()
    if args.mode == "worker":
        print(json.dumps(train(TRAIN_S, args.ready) if args.kind == "train" else decode()))
        return
    import torch

    print(f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads per process")
    print(
        "| OpenMP waiting | train alone (tok/s) | decode alone (s) | train beside decode | decode beside train |"
    )
    print("|---|---|---|---|---|")
    for name, policy in POLICIES.items():
        m = measure(policy)
        print(
            f"| {name} | {m['train']:.0f} | {m['decode']:.1f} | "
            f"{m['train_side']:.0f} ({m['train'] / m['train_side']:.1f}x slower) | "
            f"{m['decode_side']:.1f} ({m['decode_side'] / m['decode']:.1f}x slower) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
