"""Batched sampling of K completions per prompt from a causal LM, with stop strings and stop regexes.

How it runs (``TransformersGenerator.generate``):

* Prompts are tokenised once, sorted by length and grouped into batches bounded by
  ``max_batch_sequences`` (prompts × n) and ``max_batch_tokens`` (sequences × (longest prompt +
  max_new_tokens), i.e. the KV cache a batch can grow to). A single prompt whose n samples exceed a bound
  still runs, alone.
* Each batch runs its own decode loop rather than ``model.generate``, for three savings: token ids that
  every prompt of the batch starts with (system prompt, few-shot examples) are prefilled once for the
  batch; each prompt's remaining tokens are prefilled once and the KV cache is repeated n times
  (``batch_repeat_interleave``), so the K samples share the prompt's forward pass; and sequences that hit
  EOS or a stop are dropped from the batch (``batch_select_indices``, once they are 1/8 of it) instead of
  being padded along until the slowest sample ends — with short answers and a few rambling samples
  that is most of the decode work.
* Stops are detected cheaply while decoding (the last few dozen tokens of each live sequence are decoded
  and searched; a hit is confirmed on the whole completion), then the kept text is found EXACTLY
  afterwards: the completion is the shortest token prefix whose decoded text contains a stop string or a
  stop-regex match, cut right after the match that ends first. ``num_tokens`` is the length of that
  token prefix (the token that completed the stop included), or up to and including EOS.
* Sampling has transformers' distribution: temperature, then top-k, then top-p, then one draw among
  the candidates left (the top-k only, which is much cheaper than over the vocabulary).
* Every sample owns its randomness: each (prompt, sample) has a seed and every draw is a Gumbel-max
  race with noise hashed from (seed, step, token id), so the batch plan never decides a sample
  (``shared.llm.sampling`` explains the draw and what was measured).

Stop semantics to know: a regex is searched on the growing text, so it should end in a terminator —
``r"The answer is \\d+"`` would stop after the first digit, ``r"The answer is -?\\d+\\."`` is right.

NOT covered: continuous batching (refilling a batch as sequences finish), a pre-allocated (static) KV
cache or CUDA graphs, speculative decoding, beam search, vLLM, multi-GPU.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from shared import abandon
from shared.llm.sampling import next_tokens
from shared.params import GenerationParams
from shared.seeds import sample_seeds

_TAIL_TOKENS = 32  # tokens decoded per live sequence per step to look for a stop (plus the stop's length)
_MIN_SHARED_PREFIX = 16  # shorter common prompt prefixes are not worth a separate forward pass
_PRUNE_FRACTION = 0.125  # drop finished rows from a batch once they are this fraction of it


def render_prompt(tokenizer: Any, user_message: str, *, system: str | None = None, chat: bool = True) -> str:
    """The prompt text: the chat template with a generation prompt (``chat=True``), or ``user_message`` as is."""
    if not chat:
        return user_message
    user = {"role": "user", "content": user_message}
    if system is None:
        return str(tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False))
    from jinja2.exceptions import TemplateError

    try:
        return str(
            tokenizer.apply_chat_template(
                [{"role": "system", "content": system}, user], add_generation_prompt=True, tokenize=False
            )
        )
    except TemplateError:  # a template without a system role (Gemma's, Mistral's): the user's turn carries it
        user["content"] = f"{system}\n\n{user_message}"
        return str(tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False))


@dataclass(frozen=True)
class Completion:
    text: str  # decoded completion, cut at the stop, special tokens removed
    num_tokens: int  # generated tokens kept: up to and including the stop-completing token or EOS
    finish_reason: str  # "stop", "eos" or "length"


@dataclass
class _StopMatcher:
    """Finds where the earliest stop string / stop regex match ends in a text."""

    stops: tuple[str, ...]
    patterns: list[re.Pattern[str]] = field(default_factory=list)

    @classmethod
    def from_params(cls, params: GenerationParams) -> _StopMatcher:
        return cls(params.stop, [re.compile(p) for p in params.stop_regex])

    @property
    def active(self) -> bool:
        return bool(self.stops or self.patterns)

    @property
    def tail_tokens(self) -> int:
        return _TAIL_TOKENS + max((len(s) for s in self.stops), default=0)

    def end(self, text: str) -> int | None:
        ends = [i + len(s) for s in self.stops if (i := text.find(s)) >= 0]
        ends += [m.end() for p in self.patterns if (m := p.search(text))]
        return min(ends) if ends else None


def _cut(tokenizer: Any, ids: list[int], matcher: _StopMatcher) -> tuple[str, int] | None:
    """(text, num_tokens) for the shortest prefix of ``ids`` whose text holds a stop, or None if none does.

    Binary search over prefix lengths: a prefix holding a match stays matching as it grows, and decoding
    only the candidate prefixes keeps this at O(log n) decodes per completion.
    """

    def decode(k: int) -> str:
        return str(tokenizer.decode(ids[:k], skip_special_tokens=True))

    if not matcher.active or matcher.end(decode(len(ids))) is None:
        return None
    lo, hi = 1, len(ids)  # invariant: prefix hi matches
    while lo < hi:
        mid = (lo + hi) // 2
        if matcher.end(decode(mid)) is None:
            lo = mid + 1
        else:
            hi = mid
    text = decode(hi)
    end = matcher.end(text)
    assert end is not None
    return text[:end], hi


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    # Chat models often end a turn with a token that only generation_config lists (e.g. <|eot_id|>).
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def plan_batches(
    lengths: Sequence[int], n: int, max_new_tokens: int, max_sequences: int, max_tokens: int
) -> list[list[int]]:
    """Group prompt indices (sorted by token length) so each group's n·prompts and KV size fit the bounds."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        rows = (len(current) + 1) * n
        longest = max(lengths[j] for j in [*current, i])
        if current and (rows > max_sequences or rows * (longest + max_new_tokens) > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _shared_prefix_len(prompt_ids: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, worth a separate forward pass; 0 if not."""
    if len(prompt_ids) < 2:
        return 0
    # every prompt keeps >= 1 token of its own: the last token's logits start the completion
    limit = min(len(p) for p in prompt_ids) - 1
    first = prompt_ids[0]
    shared = 0
    while shared < limit and all(p[shared] == first[shared] for p in prompt_ids):
        shared += 1
    return shared if shared >= _MIN_SHARED_PREFIX else 0


def _output_cache(out: Any) -> Any:
    cache = out.get("cache", None)
    if cache is None:  # transformers < 5.24 names the output past_key_values
        cache = out.get("past_key_values", None)
    if cache is None:
        raise RuntimeError("the model returned no KV cache; generation needs use_cache support")
    return cache


def check_seeds(
    seeds: Sequence[Sequence[int]] | None, prompts: int, params: GenerationParams
) -> list[list[int]]:
    """The per-sample seeds of a call: ``params.n`` per prompt, or the default for ``params.seed``."""
    if seeds is None:
        return sample_seeds(params.seed, range(prompts), params.n)
    if len(seeds) != prompts or any(len(per) != params.n for per in seeds):
        raise ValueError(f"seeds must hold n={params.n} seeds for each of the {prompts} prompts")
    return [[seed % 2**63 for seed in per] for per in seeds]  # sample_seeds' range: 63 bits


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt, identical for sampling and training.

    A chat-templated prompt already starts with the template's BOS text, so special tokens are added only
    when it doesn't (raw few-shot text for a model whose tokenizer adds BOS); otherwise BOS would double.
    """
    bos = tokenizer.bos_token
    add_special = not (isinstance(bos, str) and bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


class TransformersGenerator:
    """Samples completions with a Hugging Face causal LM (any model whose cache supports batch selection)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str,
        max_batch_sequences: int = 512,
        max_batch_tokens: int = 65536,
    ) -> None:
        if max_batch_sequences < 1 or max_batch_tokens < 1:
            raise ValueError("max_batch_sequences and max_batch_tokens must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch_sequences = max_batch_sequences
        self.max_batch_tokens = max_batch_tokens
        self._eos = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self._pad = int(pad) if pad is not None else min(self._eos, default=0)  # pad is always masked
        params = inspect.signature(model.forward).parameters
        # transformers 5.24 renamed the forward kwarg past_key_values -> cache; earlier 5.x only know the old name
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._extra: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        max_pos = getattr(model.config, "max_position_embeddings", None)
        self._max_positions = int(max_pos) if isinstance(max_pos, int) else None

    def generate(
        self,
        prompts: Sequence[str],
        params: GenerationParams,
        *,
        seeds: Sequence[Sequence[int]] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order; ``on_progress(sequences_done)`` per batch.

        ``seeds[i][j]`` seeds sample j of prompt i (default: ``sample_seeds(params.seed, positions, n)``).
        """
        row_seeds = check_seeds(seeds, len(prompts), params)
        encoded = self._encode(prompts, params)
        lengths = [len(ids) for ids in encoded]
        plan = plan_batches(
            lengths, params.n, params.max_new_tokens, self.max_batch_sequences, self.max_batch_tokens
        )
        matcher = _StopMatcher.from_params(params)
        results: list[list[Completion]] = [[] for _ in prompts]
        done = 0
        was_training = self.model.training
        self.model.eval()  # dropout off while sampling, restored afterwards
        try:
            with torch.inference_mode():
                for members in plan:
                    batch = self._run_batch(
                        [encoded[i] for i in members], params, matcher, [row_seeds[i] for i in members]
                    )
                    for i, completions in zip(members, batch, strict=True):
                        results[i] = completions
                    done += len(members) * params.n
                    if on_progress is not None:
                        on_progress(done)
        finally:
            self.model.train(was_training)
        return results

    def _encode(self, prompts: Sequence[str], params: GenerationParams) -> list[list[int]]:
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        if any(not ids for ids in encoded):
            raise ValueError("empty prompt: every prompt needs at least one token")
        longest = max((len(ids) for ids in encoded), default=0)
        if self._max_positions is not None and longest + params.max_new_tokens > self._max_positions:
            raise ValueError(
                f"longest prompt ({longest} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                f"model's max_position_embeddings ({self._max_positions})"
            )
        return encoded

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> Any:
        kwargs = {self._cache_kwarg: cache} if cache is not None else {}
        return self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **kwargs,
            **self._extra,
        )

    def _prefill(self, prompt_ids: list[list[int]], n: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Run the prompts once; return the KV cache, last-token logits and attention mask, repeated n times.

        Token ids every prompt of the batch starts with (a system prompt, few-shot examples) run once
        and their cache is repeated per prompt; the rest of each prompt is left-padded after them, so
        the mask may hold zeros between the shared prefix and a prompt's own tokens. Positions come
        from the mask, so every real token sits where it would without padding.
        """
        shared = _shared_prefix_len(prompt_ids)
        cache = None
        if shared:
            prefix = torch.tensor([prompt_ids[0][:shared]], device=self.device)
            ones = torch.ones_like(prefix)
            cache = _output_cache(self._forward(prefix, ones, (ones.cumsum(-1) - 1), None))
            cache.batch_repeat_interleave(len(prompt_ids))
        rest = [p[shared:] for p in prompt_ids]
        width = max(len(p) for p in rest)
        ids = torch.full((len(rest), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rest), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, p in enumerate(rest):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, shared + width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        out = self._forward(ids, mask, positions, cache)
        cache, logits = _output_cache(out), out.logits[:, -1]
        if n > 1:
            cache.batch_repeat_interleave(n)  # the K samples share one prompt forward pass
            logits, mask = logits.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        return cache, logits, mask

    def _run_batch(
        self,
        prompt_ids: list[list[int]],
        params: GenerationParams,
        matcher: _StopMatcher,
        seeds: list[list[int]],
    ) -> list[list[Completion]]:
        # rows are prompt-major, as the cache after repeat_interleave
        row_seeds = torch.tensor(
            [seed for per in seeds for seed in per], dtype=torch.long, device=self.device
        )
        cache, logits, mask = self._prefill(prompt_ids, params.n)
        positions = mask.sum(-1, keepdim=True)  # position of each row's next token
        rows = list(range(mask.shape[0]))  # batch row -> output sequence; -1 once finished
        tokens: list[list[int]] = [[] for _ in rows]
        reasons = ["length"] * len(rows)
        for step in range(params.max_new_tokens):
            abandon.check()  # a cancelled run's sample/eval job stops here (see shared.abandon)
            nxt = next_tokens(logits, params, row_seeds, step)
            for i in self._record(rows, nxt.tolist(), tokens, reasons, matcher):
                rows[i] = -1
            dead = rows.count(-1)
            if step == params.max_new_tokens - 1 or dead == len(rows):
                break
            if dead >= len(rows) * _PRUNE_FRACTION:
                # Drop finished rows so later steps compute live sequences only. Not on every finish:
                # selecting rows copies the whole KV cache, which costs about as much as a few dozen
                # row-steps of compute.
                keep = [i for i, row in enumerate(rows) if row >= 0]
                index = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(index)
                mask, positions, nxt, row_seeds = mask[index], positions[index], nxt[index], row_seeds[index]
                rows = [rows[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = self._forward(nxt[:, None], mask, positions, cache).logits[:, -1]
            positions = positions + 1
        flat = [self._finish(t, r, matcher) for t, r in zip(tokens, reasons, strict=True)]
        return [flat[i : i + params.n] for i in range(0, len(flat), params.n)]

    def _record(
        self,
        rows: list[int],
        new: list[int],
        tokens: list[list[int]],
        reasons: list[str],
        matcher: _StopMatcher,
    ) -> set[int]:
        """Append this step's tokens to live rows; return the batch rows that finished (EOS or a stop)."""
        finished: set[int] = set()
        candidates: list[int] = []
        for i, (row, token) in enumerate(zip(rows, new, strict=True)):
            if row < 0:  # finished earlier, not yet pruned: its token is padding
                continue
            tokens[row].append(token)
            if token in self._eos:
                reasons[row] = "eos"
                finished.add(i)
            elif matcher.active:
                candidates.append(i)
        if candidates:
            tail = matcher.tail_tokens
            texts = self.tokenizer.batch_decode(
                [tokens[rows[i]][-tail:] for i in candidates], skip_special_tokens=True
            )
            for i, text in zip(candidates, texts, strict=True):
                # confirm a tail hit on the whole completion: a tail can match where the full text doesn't
                if matcher.end(text) is not None and matcher.end(self._decode(tokens[rows[i]])) is not None:
                    reasons[rows[i]] = "stop"
                    finished.add(i)
        return finished

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _finish(self, ids: list[int], reason: str, matcher: _StopMatcher) -> Completion:
        body = ids[:-1] if reason == "eos" else ids
        cut = _cut(self.tokenizer, body, matcher) if body else None
        if cut is not None:  # also catches a stop the per-step tail check missed (longer than the tail)
            return Completion(text=cut[0], num_tokens=cut[1], finish_reason="stop")
        return Completion(text=self._decode(body), num_tokens=len(ids), finish_reason=reason)
