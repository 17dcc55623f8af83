"""After verification: how far each condition kept the baseline's generation, and decoding on from there.

:func:`diverge_at` and :func:`with_divergence` are the measurement (per sample: the index of the
first generated token that differs from the baseline's, and whether none does; per condition:
their means). The rest serves :mod:`depthprobe.engine.verify`: the KV cache of a row's verified
prefix (:func:`prefix_rows`: the baseline's layers below the condition's tail, the
verification's from it, each row right-aligned so that rows of different lengths share one
batch), the rows waiting to be decoded on (:class:`Pending`), handed over as places free up, those
of lengths nearest the running batch's first (:func:`nearest`), and prompt-lookup drafts
(:class:`Lookup`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from depthprobe.evaluation.generation import Generation

__all__ = [
    "Lookup",
    "Pending",
    "VerifyStats",
    "diverge_at",
    "merge",
    "nearest",
    "prefix_rows",
    "select",
    "with_divergence",
]


def diverge_at(tokens: Sequence[int], baseline: Sequence[int]) -> int:
    """Index of the first token of ``tokens`` that differs from ``baseline``'s; ``len(tokens)`` if none does."""
    for i, (a, b) in enumerate(zip(tokens, baseline)):
        if a != b:
            return i
    return min(len(tokens), len(baseline))


def with_divergence(
    metrics: dict[str, float], samples: Any, generations: Sequence[Generation], baseline: Sequence[Generation]
) -> tuple[dict[str, float], Any]:
    """A condition's metrics and samples with how its generations depart from the baseline's.

    Per sample: ``diverge_at`` (index of the first generated token that differs from the
    baseline's; the generation's length if none does) and ``identical_to_baseline``; per
    condition, their means with standard errors (the run directory adds the paired interval of
    their deltas, as for every metric).
    """
    from depthprobe.evaluation.metrics import mean_stderr

    at = [diverge_at(g.tokens, b.tokens) for g, b in zip(generations, baseline, strict=True)]
    same = [float(tuple(g.tokens) == tuple(b.tokens)) for g, b in zip(generations, baseline)]
    samples = samples.assign(diverge_at=at, identical_to_baseline=[bool(x) for x in same])
    metrics = dict(metrics)
    for name, values in (("identical_to_baseline", same), ("diverge_at", [float(a) for a in at])):
        metrics[name] = sum(values) / len(values) if values else float("nan")
        metrics[f"{name}_stderr"] = mean_stderr(values)
    return metrics, samples


@dataclass
class VerifyStats:
    """Where the work went: rows, those finished by verification alone, tokens verified, rows and tokens decoded on."""

    rows: int = 0
    finished_by_verify: int = 0
    tokens_verified: int = 0
    tokens_decoded: int = 0
    rows_decoded: int = 0
    row_steps: int = 0
    drafted_accepted: int = 0
    #: positions run through a tail in verification (rows x positions)
    positions_verified: int = 0
    #: decode batches decoded token by token because their group's first batch kept little of the baseline
    jobs_plain: int = 0
    forwards: dict[str, int] = field(default_factory=lambda: {"baseline": 0, "verify": 0, "decode": 0})


class Lookup:
    """Prompt-lookup drafts for the rows of a continuation: the row's last tokens matched in the baseline's
    generation of the same document, then in the prompt; the ``n`` tokens that followed there."""

    def __init__(self, sources: list[tuple[list[int], list[int]]], n: int, ngram: int = 3) -> None:
        self.sources: list[tuple[list[int], list[int]]] = []
        self.index: list[list[dict[tuple[int, ...], list[int]]] | None] = []
        self.n, self.ngram = n, ngram
        self.add(sources)

    def add(self, sources: list[tuple[list[int], list[int]]]) -> None:
        """Rows that joined the continuation (in the order they were handed over)."""
        self.sources.extend(sources)
        self.index.extend([None] * len(sources))

    def _tables(self, row: int) -> list[dict[tuple[int, ...], list[int]]]:
        if self.index[row] is None:
            tables = []
            for seq in self.sources[row]:
                table: dict[tuple[int, ...], list[int]] = {}
                for size in range(1, self.ngram + 1):
                    for at in range(len(seq) - size):
                        table.setdefault(tuple(seq[at : at + size]), []).append(at + size)
                tables.append(table)
            self.index[row] = tables
        return self.index[row]  # type: ignore[return-value]

    def __call__(self, row: int, tokens: list[int]) -> list[int]:
        tables = self._tables(row)
        for size in range(min(self.ngram, len(tokens)), 0, -1):
            key = tuple(tokens[-size:])
            for seq, table in zip(self.sources[row], tables):
                hits = table.get(key)
                if hits:  # the occurrence nearest the row's own position
                    nxt = min(hits, key=lambda at: abs(at - len(tokens)))
                    return seq[nxt : nxt + self.n]
        return []


@dataclass
class Pending:
    """Rows to decode on from their divergence, with the caches and masks of their verified prefixes."""

    rows: list[tuple[int, int]]  # (block, request)
    prior: list[list[int]]  # tokens so far: the verified prefix and the condition's first differing token
    reused: list[bool]
    cache: DynamicCache
    mask: Tensor  # [rows, cache positions]: the verified prefix, right-aligned (0: not attended)
    sources: list[tuple[list[int], list[int]]]  # (baseline generation, prompt) per row, for drafting


def prefix_rows(
    rows: list[list[tuple[Tensor, Tensor]]], lengths: list[int], masks: list[Tensor]
) -> tuple[DynamicCache, Tensor]:
    """The cache of rows whose first ``lengths[a]`` positions are valid, right-aligned into one batch, and its mask.

    ``rows[a][l]`` is row ``a``'s (keys, values) of layer ``l``, one row each; ``masks[a]`` is its
    mask over (at least) its first ``lengths[a]`` positions. Shorter rows are left-padded with
    masked-out positions.
    """
    width = max(lengths)
    layers = []
    for layer in range(len(rows[0])):
        keys, values = [], []
        for per_layer, n in zip(rows, lengths):
            k, v = per_layer[layer]
            keys.append(torch.nn.functional.pad(k[:, :, :n], (0, 0, width - n, 0)))
            values.append(torch.nn.functional.pad(v[:, :, :n], (0, 0, width - n, 0)))
        layers.append((torch.cat(keys), torch.cat(values)))
    mask = torch.stack([torch.nn.functional.pad(m[:n], (width - n, 0)) for m, n in zip(masks, lengths)])
    return DynamicCache(layers), mask


def select(chunk: Pending, rows: list[int]) -> Pending:
    """Rows ``rows`` of ``chunk``."""
    index = torch.tensor(rows, dtype=torch.long, device=chunk.mask.device)
    cache = DynamicCache([(layer.keys[index], layer.values[index]) for layer in chunk.cache.layers])
    return Pending(
        [chunk.rows[r] for r in rows],
        [chunk.prior[r] for r in rows],
        [chunk.reused[r] for r in rows],
        cache,
        chunk.mask[index],
        [chunk.sources[r] for r in rows],
    )


def nearest(chunks: list[Pending], n: int, width: int) -> tuple[Pending, list[Pending]]:
    """The ``n`` rows of ``chunks`` whose attended positions come nearest ``width`` (one batch), and the rest.

    Rows join a running batch whose cache is ``width`` positions wide (0: none is running): a
    narrower row costs its own difference, a wider one widens every row's cache, so rows at or
    just below that width come first, then the narrowest (see :meth:`~depthprobe.evaluation.decode.LoopDecoder.resume`).
    """
    widths = sorted(
        ((False, width - w) if w <= width else (True, w), c, r)
        for c, chunk in enumerate(chunks)
        for r, w in enumerate(chunk.mask.sum(-1).tolist())
    )
    chosen: dict[int, set[int]] = {}
    for _, c, r in widths[:n]:
        chosen.setdefault(c, set()).add(r)
    taken, rest = [], []
    for c, chunk in enumerate(chunks):
        mine = sorted(chosen.get(c, ()))
        if len(mine) == len(chunk.rows):
            taken.append(chunk)
            continue
        if mine:
            taken.append(select(chunk, mine))
        rest.append(select(chunk, [r for r in range(len(chunk.rows)) if r not in chosen.get(c, ())]))
    return merge(taken), rest


def merge(chunks: list[Pending]) -> Pending:
    """One batch of the chunks' rows: shorter caches left-padded with masked-out positions."""
    if len(chunks) == 1:
        return chunks[0]
    width = max(c.mask.shape[1] for c in chunks)
    layers = []
    for layer in range(len(chunks[0].cache.layers)):
        keys, values = [], []
        for c in chunks:
            pad = (0, 0, width - c.mask.shape[1], 0)
            keys.append(torch.nn.functional.pad(c.cache.layers[layer].keys, pad))
            values.append(torch.nn.functional.pad(c.cache.layers[layer].values, pad))
        layers.append((torch.cat(keys), torch.cat(values)))
    mask = torch.cat([torch.nn.functional.pad(c.mask, (width - c.mask.shape[1], 0)) for c in chunks])
    return Pending(
        [r for c in chunks for r in c.rows],
        [p for c in chunks for p in c.prior],
        [u for c in chunks for u in c.reused],
        DynamicCache(layers),
        mask,
        [x for c in chunks for x in c.sources],
    )
