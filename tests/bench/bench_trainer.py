"""Trainer throughput: restem's M-step loop vs a minimal hand-written Hugging Face loop (a script, not a test).

Same model (random init from a config: throughput does not depend on the weights), same synthetic
examples (random token ids with a prompt/completion length mix), same optimiser steps of the same
examples in the same order, same AdamW and clipping, in one process. Variants:

- ``hf``: the loop everyone writes first: right-padded batches, ``model(..., labels=labels)``,
  ``loss.backward()``, clip, ``AdamW.step()``.
- ``restem``: ``shared.llm.training.train_features`` with padded batches (logits on completion tokens only).
- ``restem+packing``: the same with sequence packing (rows of ``--row-len`` tokens).

Several processes (``--nproc N``): the script runs itself again under ``torch.distributed.run`` and the
restem variants train data parallel over N ranks, once per ``--sharding`` (``none``: every rank holds
the whole model; ``fsdp``: FSDP2 shards, see ``shared/llm/distributed.py``); tokens/s then counts every
rank's tokens. ``hf`` is single-process only.

Throughput = non-padding tokens (prompt + completion) per second, over the steps after ``--warmup``;
on CUDA, MFU = 6 x parameters x tokens/s / peak bf16 FLOP/s (``--peak-tflops``, default 989 = H100 SXM
dense; the 6N rule counts matmul FLOPs of the parameters only, not attention scores).

    python tests/bench/bench_trainer.py                                   # CPU: SmolLM2-135M shape, demo-like data
    python tests/bench/bench_trainer.py --device cuda --model smollm2-135m --batch 32 --prompt 64 512 \\
        --completion 32 512 --row-len 2048 --steps 12
    python tests/bench/bench_trainer.py --model tiny --nproc 2 --sharding none fsdp --variants restem+packing
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.llm.distributed import DataParallel, init_from_env
from shared.llm.loss import autocast
from shared.llm.packing import IGNORE, collate, epoch_steps
from shared.llm.training import Hooks, TrainParams, train_features

SHAPES: dict[str, dict[str, Any]] = {
    # SmolLM2-135M's own config (tied embeddings, vocab 49152)
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True},
    # a ~0.5B Llama (Qwen2.5-0.5B-like widths, SmolLM2 vocabulary)
    "llama-0.5b": {"hidden_size": 1280, "intermediate_size": 3584, "num_hidden_layers": 24,
                   "num_attention_heads": 20, "num_key_value_heads": 4, "tie_word_embeddings": True},
    # for a quick smoke run
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True},
}  # fmt: skip
VOCAB = 49152


def build_model(shape: str, device: str, attn: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=8192, rope_theta=100000.0, **SHAPES[shape])
    config._attn_implementation = attn
    torch.manual_seed(0)
    if device == "meta":  # shapes only (to count parameters), nothing allocated
        with torch.device("meta"):
            return LlamaForCausalLM(config)
    # fp32 master weights on every device, as the trainer loads them (bf16 autocast on CUDA)
    return LlamaForCausalLM(config).to(device)


def synthetic_features(args: argparse.Namespace) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(1)
    features = []
    for _ in range(args.examples):
        p = int(torch.randint(args.prompt[0], args.prompt[1] + 1, (1,), generator=gen))
        c = int(torch.randint(args.completion[0], args.completion[1] + 1, (1,), generator=gen))
        ids = torch.randint(1, VOCAB, (p + c,), generator=gen).tolist()
        features.append({"input_ids": ids, "labels": [IGNORE] * p + ids[p:], "weight": 1.0})
    return features


def hf_loop(
    model: Any, features: list[dict[str, Any]], steps: list[list[int]], lr: float, device: str
) -> list[float]:
    """The minimal loop; returns the wall-clock time at the end of every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=device.startswith("cuda") or None)
    model.train()
    stamps = []
    for step in steps:
        batch = collate([features[i] for i in step], pad_id=0)
        with autocast(device):
            out = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                labels=batch["labels"].to(device),
                use_cache=False,
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.loss.item()  # a real loop logs its loss; also waits for the GPU
        stamps.append(time.perf_counter())
    return stamps


def restem_loop(
    model: Any, features: list[dict[str, Any]], params: TrainParams, device: str, dp: DataParallel | None
) -> list[float]:
    stamps: list[float] = []
    hooks = Hooks(on_step=lambda *_: stamps.append(time.perf_counter()))
    train_features(model, features, params, pad_id=0, device=device, hooks=hooks, dp=dp)
    return stamps


def _rate(stamps: list[float], step_tokens: list[int], warmup: int) -> float:
    return sum(step_tokens[warmup + 1 :]) / (stamps[-1] - stamps[warmup])


def _measure(
    variant: str,
    args: argparse.Namespace,
    device: str,
    features: list[dict[str, Any]],
    steps: list[list[int]],
    step_tokens: list[int],
    dp: DataParallel | None = None,
) -> float:
    # sharded: built on the CPU, as the trainer loads it; train_features moves each rank's shard
    model = build_model(args.model, "cpu" if dp is not None and dp.sharded else device, args.attn)
    if variant == "hf":
        stamps = hf_loop(model, features, steps, 1e-4, device)
    else:
        params = TrainParams(
            learning_rate=1e-4, batch_size=args.batch, max_steps=args.steps, seed=0, max_seq_len=args.row_len,
            packing=variant == "restem+packing", micro_batch_size=args.micro_batch, checkpoint_every_steps=0,
        )  # fmt: skip
        stamps = restem_loop(model, features, params, device, dp)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return _rate(stamps, step_tokens, args.warmup)


def run(args: argparse.Namespace) -> dict[str, float]:
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    dp: DataParallel | None = None
    runs: list[tuple[str, DataParallel | None]] = [(v, None) for v in args.variants]
    if args.nproc > 1:  # a torchrun worker (main started them)
        if "hf" in args.variants:
            raise SystemExit("--nproc > 1 measures the restem variants only: drop hf from --variants")
        dp, device = init_from_env(device)
        runs = [(v, replace(dp, sharding=s)) for v in args.variants for s in args.sharding]
    say = print if dp is None or dp.rank == 0 else (lambda *a, **k: None)
    features = synthetic_features(args)
    lengths = [len(f["input_ids"]) for f in features]
    per_epoch = -(-len(features) // args.batch)
    steps = [s for e in range(-(-args.steps // per_epoch)) for s in epoch_steps(lengths, args.batch, 0, e)]
    steps = steps[: args.steps]
    step_tokens = [sum(lengths[i] for i in s) for s in steps]
    n_params = sum(p.numel() for p in build_model(args.model, "meta", "sdpa").parameters())
    say(f"device {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else f'{torch.get_num_threads()} threads'}), "
          f"model {args.model} ({n_params / 1e6:.1f}M parameters, attention {args.attn}), batch {args.batch}, "
          f"{args.steps} steps ({args.warmup} warm-up), {sum(step_tokens) / args.steps:.0f} tokens/step"
          + (f", {args.nproc} processes" if dp is not None else ""))  # fmt: skip
    rates: dict[str, float] = {}
    # Rounds alternate the variants and each keeps its best round: a neighbour process that steals the
    # CPU for a while then slows one round of one variant, not the comparison.
    gpus = args.nproc if device.startswith("cuda") else 1  # MFU: per GPU
    for round_ in range(args.repeats):
        for variant, rank_dp in runs:
            name = variant if rank_dp is None else f"{variant}/{rank_dp.sharding}"
            rate = _measure(variant, args, device, features, steps, step_tokens, rank_dp)
            rates[name] = max(rate, rates.get(name, 0.0))
            mfu = 6 * n_params * rate / gpus / (args.peak_tflops * 1e12)
            extra = f"  MFU {100 * mfu:5.1f} %" if device.startswith("cuda") else ""
            say(f"  round {round_ + 1}  {name:<21} {rate:>10.0f} tokens/s{extra}", flush=True)
    say("best of the rounds:")
    for name, rate in rates.items():
        mfu = 6 * n_params * rate / gpus / (args.peak_tflops * 1e12)
        extra = (
            f"  MFU {100 * mfu:5.1f} % of {args.peak_tflops:.0f} TFLOP/s" if device.startswith("cuda") else ""
        )
        say(f"  {name:<21} {rate:>10.0f} tokens/s{extra}")
    if "hf" in rates:
        for variant in [v for v in rates if v != "hf"]:
            say(f"  ratio {variant} / hf = {rates[variant] / rates['hf']:.2f}")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument(
        "--attn", default="sdpa", help="attention implementation: sdpa, eager, flex_attention"
    )
    parser.add_argument("--batch", type=int, default=8, help="examples per optimiser step")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the variants; the best counts")
    parser.add_argument("--micro-batch", type=int, default=None, help="restem micro_batch_size")
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of the timing")
    # defaults: the arithmetic demo's kept samples (chat-template prompt ~45 tokens, completion 10-40)
    parser.add_argument("--prompt", type=int, nargs=2, default=(35, 60), metavar=("MIN", "MAX"))
    parser.add_argument("--completion", type=int, nargs=2, default=(8, 45), metavar=("MIN", "MAX"))
    parser.add_argument("--row-len", type=int, default=512, help="max_seq_len: packed row length")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak for MFU (H100 SXM)")
    parser.add_argument("--variants", nargs="+", default=["hf", "restem", "restem+packing"])
    parser.add_argument("--nproc", type=int, default=1, help="training processes (torchrun workers)")
    parser.add_argument(
        "--sharding",
        nargs="+",
        choices=["none", "fsdp"],
        default=["none"],
        help="with --nproc > 1: each is measured",
    )
    args = parser.parse_args()
    if args.nproc > 1 and "RANK" not in os.environ:  # start the workers, which run this script again
        from torch.distributed import run as torchrun

        launch = torchrun.parse_args(["--standalone", f"--nproc-per-node={args.nproc}", __file__])
        launch.training_script_args = sys.argv[
            1:
        ]  # not through torchrun's parser: --nproc is ambiguous there
        torchrun.run(launch)
        return
    run(args)


if __name__ == "__main__":
    main()
