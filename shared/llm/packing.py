"""Batches for the M-step: the data order of each epoch, padded batches, packed batches, and a packing check.

Data order: epoch ``e`` shuffles the examples with a ``torch.Generator`` seeded ``seed + e`` and cuts the
order into optimiser steps of ``batch_size`` examples. It is a pure function of (seed, epoch, lengths),
so a resumed run replays exactly the steps an uninterrupted one would have taken.

Length bucketing (padded batches only): the shuffled order is cut into "mega-batches" of
``BUCKET_STEPS`` steps; each is sorted by length and cut into steps, and the steps are shuffled again.
Steps then hold similar lengths and padding shrinks; it changes which examples share a step (as every
length-grouped sampler does), so it is opt-in.

Packing: the examples of a micro-batch are laid end to end in rows of at most ``row_len`` tokens
(as few rows as the tokens need, balanced: see ``pack_rows``). Each example's ``position_ids`` restart at 0 and NO 2-D attention mask is
passed: transformers (>= 5) then derives the sequence boundaries from the position resets and builds a
block-diagonal causal mask for the sdpa/eager paths (``masking_utils.find_packed_sequence_indices``);
flash-attention-2 uses the same position ids for its varlen path. A 2-D attention mask of ones would
silently switch that off and let packed samples attend to each other, which is why ``pack`` returns
none. Padding at the end of a row is its own pseudo-sequence (positions restart too) with labels -100.
Every example starts with a prompt token (label -100), so no loss term crosses a boundary either.
``check_packing`` verifies all this on the actual model before training, because the mechanism
lives in each model's attention code and a model that ignores position resets would train on
contaminated context without any error.

Both collators return ``token_weights`` (the sample's reward weight on each of its completion label
positions) and ``token_counts`` (the sample's number of completion tokens), from which the loss
derives per-token or per-sample normalisation (see ``training.token_loss_weights``).

Not covered: packing across micro-batches (a micro-batch is a number of examples, not a token budget),
splitting an example over rows (an example longer than ``row_len`` is an error upstream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE = -100  # label value cross_entropy skips: prompt tokens and padding
BUCKET_STEPS = 16  # steps per length-sorted mega-batch: wide enough to group lengths, still shuffled


def epoch_steps(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucketing: bool = False
) -> list[list[int]]:
    """Example indices of every optimiser step of ``epoch`` (the last step may be smaller)."""
    gen = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    if not bucketing:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    mega = batch_size * BUCKET_STEPS
    steps: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: (-lengths[i], i))
        steps += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    # Keep the small leftover step last: every other step then has exactly batch_size examples.
    body, tail = (steps[:-1], steps[-1:]) if len(order) % batch_size else (steps, [])
    shuffled = [body[i] for i in torch.randperm(len(body), generator=gen).tolist()]
    return shuffled + tail


def micro_batches(step: Sequence[int], lengths: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Split one step into micro-batches; sorting by length first makes each micro-batch's padding small.

    The order inside a step does not change the step's gradient (the loss is summed over the step).
    """
    ordered = sorted(step, key=lambda i: (-lengths[i], i))
    return [ordered[i : i + micro_batch_size] for i in range(0, len(ordered), micro_batch_size)]


def _weights_and_counts(f: dict[str, Any]) -> tuple[list[float], list[float]]:
    n = sum(1 for lab in f["labels"] if lab != IGNORE)
    return [float(f["weight"])] * len(f["labels"]), [float(n)] * len(f["labels"])


def collate(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels (padding -100), weights, token weights/counts."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    tw = torch.zeros((len(features), width))
    tc = torch.ones((len(features), width))
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        mask[row, :n] = 1
        weights, counts = _weights_and_counts(f)
        tw[row, :n], tc[row, :n] = torch.tensor(weights), torch.tensor(counts)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "weights": torch.tensor([f["weight"] for f in features], dtype=torch.float32),
        "token_weights": tw,
        "token_counts": tc,
    }


def pack_rows(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Indices (into ``lengths``) of the examples of each row: few rows, of nearly equal length.

    Rows start at the fewest the tokens need (ceil(total / row_len)); examples go longest first into
    the least-filled row with room (a new row when none has). Equal rows matter because a batch is as
    wide as its longest row: first-fit would fill rows to ``row_len`` and leave the last one mostly padding.
    """
    if any(n > row_len for n in lengths):
        raise ValueError(f"an example of {max(lengths)} tokens does not fit a packed row of {row_len}")
    count = max(1, -(-sum(lengths) // row_len))
    rows: list[list[int]] = [[] for _ in range(count)]
    filled = [0] * count
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [r for r in range(len(rows)) if filled[r] + lengths[i] <= row_len]
        if not fits:
            rows.append([])
            filled.append(0)
            fits = [len(rows) - 1]
        r = min(fits, key=lambda r: (filled[r], r))
        rows[r].append(i)
        filled[r] += lengths[i]
    return [row for row in rows if row]


def pack(features: Sequence[dict[str, Any]], pad_id: int, row_len: int) -> dict[str, torch.Tensor]:
    """Packed batch: input_ids, position_ids (reset per example), labels, token weights/counts; no mask."""
    rows = pack_rows([len(f["input_ids"]) for f in features], row_len)
    width = max(sum(len(features[i]["input_ids"]) for i in row) for row in rows)
    out = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE, dtype=torch.long),
        "position_ids": torch.zeros((len(rows), width), dtype=torch.long),
        "token_weights": torch.zeros((len(rows), width)),
        "token_counts": torch.ones((len(rows), width)),
    }
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            f = features[i]
            n = len(f["input_ids"])
            weights, counts = _weights_and_counts(f)
            out["input_ids"][r, at : at + n] = torch.tensor(f["input_ids"])
            out["labels"][r, at : at + n] = torch.tensor(f["labels"])
            out["position_ids"][r, at : at + n] = torch.arange(n)
            out["token_weights"][r, at : at + n] = torch.tensor(weights)
            out["token_counts"][r, at : at + n] = torch.tensor(counts)
            at += n
        out["position_ids"][r, at:] = torch.arange(width - at)  # padding: a pseudo-sequence of its own
    return out


@torch.no_grad()
def check_packing(model: Any, device: str, vocab_size: int, atol: float = 1e-3) -> None:
    """Raise ValueError unless two packed sequences give the same logits as each run alone.

    Runs in eval mode (dropout off) and fp32 (no autocast) on 2 short random sequences: milliseconds.
    """
    was_training = model.training
    model.eval()
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = (torch.randint(1, vocab_size, (n,), generator=gen) for n in (7, 5))
        alone = [model(input_ids=x[None].to(device), use_cache=False).logits[0].float() for x in (a, b)]
        packed = pack([{"input_ids": x.tolist(), "labels": x.tolist(), "weight": 1.0} for x in (a, b)], 0, 16)
        out = model(
            input_ids=packed["input_ids"].to(device),
            position_ids=packed["position_ids"].to(device),
            use_cache=False,
        ).logits[0]
        diff = max(float((out[:7] - alone[0]).abs().max()), float((out[7:12] - alone[1]).abs().max()))
    finally:
        model.train(was_training)
    if not diff <= atol:
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "?")
        raise ValueError(
            f"sequence packing is not supported by this model (attention implementation {impl!r}): packed "
            f"samples would attend to each other (logits differ by {diff:.3g}); set training.packing: false"
        )
