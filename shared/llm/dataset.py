"""Kept sets larger than memory: stream JSONL rows, tokenise them in chunks, keep the ids on disk.

The trainer never holds a whole kept set: ``read_chunks`` reads a JSONL file line by line and hands
out at most ``rows`` parsed rows at a time; ``write_tokenized`` tokenises each chunk and appends the
token ids to ``ids.bin`` (int32, one flat array) in a directory under the trainer's work dir. What
stays in RAM is per example: its offset, prompt length and weight (20 bytes, so 50 M examples per GB).
``TokenizedSet`` memory-maps ``ids.bin`` and builds one example's ``input_ids``/``labels``/``weight``
when the training loop asks for it (``set[i]``), so a step touches only its own examples' pages.

The same directory is what the ranks of a multi-process M-step read (each memory-maps it: one copy in
the page cache for all of them).

Not covered: examples longer than ``max_seq_len`` are an error (as in ``training.tokenize_examples``),
never silently truncated; they are counted over the whole stream and reported once at the end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shared.llm.packing import IGNORE

ROWS_PER_CHUNK = 1024  # rows parsed and tokenised together: bounded memory, still batched
IDS, INDEX, META = "ids.bin", "index.npz", "meta.json"


def read_chunks(lines: Iterable[str | bytes], rows: int = ROWS_PER_CHUNK) -> Iterator[list[dict[str, Any]]]:
    """Parsed JSONL rows, at most ``rows`` at a time, reading ``lines`` lazily (a file object streams)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1 (got {rows})")
    chunk: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            chunk.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number} of the kept set is not JSON: {exc}") from exc
        if len(chunk) == rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_tokenized(
    chunks: Iterable[list[Any]],
    encode: Callable[[Any], tuple[list[int], int, float]],
    out_dir: Path,
    max_seq_len: int,
) -> TokenizedSet:
    """Tokenise every item of ``chunks`` with ``encode(item) -> (input_ids, prompt_len, weight)`` into ``out_dir``.

    Raises ValueError when there is no item, or when any is longer than ``max_seq_len`` (all counted).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    offsets, prompt_lens, weights = [0], [], []
    too_long: list[int] = []
    digest = hashlib.sha256()
    with (out_dir / IDS).open("wb") as ids_file:
        for chunk in chunks:
            for item in chunk:
                ids, prompt_len, weight = encode(item)
                if len(ids) > max_seq_len:
                    too_long.append(len(ids))
                array = np.asarray(ids, dtype=np.int32)
                ids_file.write(array.tobytes())
                digest.update(array.tobytes())
                digest.update(np.asarray([prompt_len], dtype=np.int64).tobytes() + repr(weight).encode())
                offsets.append(offsets[-1] + len(ids))
                prompt_lens.append(prompt_len)
                weights.append(weight)
    if too_long:
        raise ValueError(
            f"{len(too_long)} of {len(weights)} examples exceed max_seq_len={max_seq_len} "
            f"(longest {max(too_long)} tokens); raise training.max_seq_len or shorten prompts/completions"
        )
    if not weights:
        raise ValueError("no training examples (no sample was kept): skip this M-step instead of training")
    np.savez(
        out_dir / INDEX,
        offsets=np.asarray(offsets, dtype=np.int64),
        prompt_lens=np.asarray(prompt_lens, dtype=np.int32),
        weights=np.asarray(weights, dtype=np.float64),
    )
    (out_dir / META).write_text(json.dumps({"examples": len(weights), "digest": digest.hexdigest()}))
    return TokenizedSet(out_dir)


class TokenizedSet:
    """A tokenised kept set in a directory (see the module doc); indexable like a list of feature dicts."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        index = np.load(self.directory / INDEX)
        self._offsets, self._prompt_lens = index["offsets"], index["prompt_lens"]
        self._weights = index["weights"]
        meta = json.loads((self.directory / META).read_text())
        self._digest = str(meta["digest"])
        size = int(self._offsets[-1])
        # np.memmap refuses an empty file; a set of zero tokens cannot exist (every example has a prompt)
        self._ids = np.memmap(self.directory / IDS, dtype=np.int32, mode="r", shape=(size,))
        self.lengths: list[int] = np.diff(self._offsets).tolist()

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        ids = self._ids[start:end].tolist()
        prompt = int(self._prompt_lens[i])
        return {
            "input_ids": ids,
            "labels": [IGNORE] * prompt + ids[prompt:],
            "weight": float(self._weights[i]),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    def masses(self, normalisation: str) -> tuple[list[float], list[int]]:
        """Each example's loss-denominator share and completion tokens (``training._loss_mass``)."""
        counts = np.diff(self._offsets) - self._prompt_lens  # every prompt has >= 1 token
        if normalisation == "token":
            masses = self._weights * counts
        else:
            masses = np.where(counts > 0, self._weights, 0.0)
        return masses.tolist(), counts.tolist()

    def digest(self) -> str:
        """sha256 of every example's ids, prompt length and weight (the training inputs' fingerprint)."""
        return self._digest
