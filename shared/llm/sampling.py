"""The per-token draw of ``shared.llm.generation``: temperature, top-k, top-p, then a seeded race.

Sampling has transformers' distribution: temperature, then top-k, then top-p, then one draw among
the candidates left (the top-k only, which is much cheaper than over the vocabulary).

Every sample owns its randomness. ``generate(..., seeds=)`` gives each (prompt, sample) a seed
(callers use ``shared.seeds.sample_seeds``: a hash of the job seed, the problem id and the sample
index; by default the prompt's position in the call stands in for the problem id). The draw at
decode step t is a Gumbel-max race, argmax over candidates v of (logit_v / T + G(seed, t, v)),
which picks v with exactly its softmax probability; the noise G is a counter-based hash of
(seed, t, token id): no generator state, nothing shared between rows, a pruned row simply drops
its seed. So neither the batch plan, the batch limits, the other prompts of the call, n, nor the
order or count of the other candidates decide a sample's draws: the same (seed, prompt) gives the
same completion however the work is split (a fixed-K call of n=8 and two calls of n=4 with the
seeds of indices 0-3 and 4-7 agree sample for sample). Batch shape and padding still change the
logits by float rounding; a token's score depends on its own logit only, so a draw flips only
when the winner's margin is below that rounding, or when a candidate that the rounding moves
across the top-k / top-p cut-off would itself have won (it sits at the cut-off: tiny mass).
Measured on SmolLM2 (CPU): no sample of 896 (top-k 40) and of 448 (full-vocabulary top-p 0.95)
changed between fixed K, rounds of 4 + 4, other shards and other batch limits. An inverse CDF
over one uniform per step was tried first: there every candidate's interval depends on the mass
of the others, and full-vocabulary top-p changed 1 % of the samples between batchings.
Over the whole vocabulary (top_k 0) the race runs in two levels, a block of 256 token ids, then a
token of that block, with the same distribution and (V/256 + 256) instead of V hashes per row.
The hash is integer arithmetic, exact on any device: on CUDA only the logits vary (kernel
non-determinism).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from shared.params import GenerationParams


def next_tokens(
    logits: torch.Tensor, params: GenerationParams, seeds: torch.Tensor, step: int
) -> torch.Tensor:
    """Greedy argmax, or temperature -> top-k -> top-p -> each row's race with its own noise."""
    logits = logits.float()
    if params.greedy:
        return logits.argmax(dim=-1)
    scores = logits / params.temperature
    keys = _step_keys(seeds, step)
    if 0 < params.top_k < scores.shape[-1]:
        # Race among the k candidates only: the same distribution as masking the rest to -inf, but
        # the draw touches k columns instead of the vocabulary — a draw over 49k columns × 512 rows
        # took more CPU time than the model's forward pass.
        values, candidates = torch.topk(scores, params.top_k, dim=-1)  # sorted, descending
        if params.top_p < 1.0:
            values = values.masked_fill(_nucleus_drop(values, params.top_p), float("-inf"))
        return candidates.gather(1, _race(values, candidates, keys)[:, None]).squeeze(1)
    if params.top_p < 1.0:
        values, order = torch.sort(scores, dim=-1, descending=True)
        drop = torch.zeros_like(order, dtype=torch.bool).scatter_(
            1, order, _nucleus_drop(values, params.top_p)
        )
        scores = scores.masked_fill(drop, float("-inf"))
    return _race_vocabulary(scores, keys)


def _nucleus_drop(values: torch.Tensor, top_p: float) -> torch.Tensor:
    """For scores sorted descending: drop a candidate once those before it hold top_p of the mass."""
    probs = values.softmax(dim=-1)
    drop = (probs.cumsum(dim=-1) - probs) >= top_p
    drop[:, 0] = False  # the first always stays
    return drop


_M32 = 0xFFFFFFFF
_BLOCK = 256  # token ids per block of the two-level race over the vocabulary
_BLOCK_IDS = 1 << 31  # block b's noise is keyed as id _BLOCK_IDS + b, apart from every token id


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective mixer of 32-bit values held in int64 (a 27-bit multiplier: products never overflow)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def _step_keys(seeds: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, two 32-bit keys of (seed, step) from differently started lanes (64 bits between them)."""
    low, high = seeds & _M32, seeds >> 32  # seeds are 63-bit, so the shift is a logical one
    lanes = []
    for start in (0x9E3779B9, 0x7F4A7C15):
        lanes.append(_mix32(_mix32(_mix32(low ^ start) ^ high) ^ step)[:, None])
    return lanes[0], lanes[1]


def _race(scores: torch.Tensor, ids: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per row, the column winning argmax(score + Gumbel noise of (row key, id)): softmax(scores)-distributed.

    A column's noise is a function of its id alone, so the winner does not depend on the order of the
    columns or on which other columns are there; -inf scores never win.
    """
    bits = _mix32(_mix32(ids ^ keys[0]) ^ keys[1])
    uniform = (bits.double() + 0.5) / 2**32  # in (0, 1), exactly
    return (scores.double() - torch.log(-torch.log(uniform))).argmax(dim=-1)


def _race_vocabulary(scores: torch.Tensor, keys: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The race over every token id in two levels: a block of ids by its mass, then a token of the block."""
    rows, vocab = scores.shape
    blocks = -(-vocab // _BLOCK)
    padded = torch.nn.functional.pad(scores, (0, blocks * _BLOCK - vocab), value=float("-inf"))
    padded = padded.view(rows, blocks, _BLOCK)
    block_ids = torch.arange(blocks, device=scores.device).expand(rows, -1) + _BLOCK_IDS
    block = _race(padded.logsumexp(dim=-1), block_ids, keys)  # P(block) = its share of the mass
    token_ids = block[:, None] * _BLOCK + torch.arange(_BLOCK, device=scores.device)
    inside = padded[torch.arange(rows, device=scores.device), block]
    return token_ids.gather(1, _race(inside, token_ids, keys)[:, None]).squeeze(1)
