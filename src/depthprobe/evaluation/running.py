"""The running batch of the decoding loop, and rows that join it mid-way (continuous batching).

:class:`RunningBatch` holds what :class:`~depthprobe.evaluation.decode.LoopDecoder` carries from
step to step: every row's tokens, each running row's block, the attention mask and the KV cache;
rows leave it (``select``) and their unattended positions are squeezed out (``pack``).
:class:`Rows` are rows handed to :meth:`~depthprobe.evaluation.decode.LoopDecoder.resume`
(generations already under way), and :class:`Refill` takes them in as places free up, setting aside
rows far longer than the rest to finish together at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

__all__ = ["Refill", "Rows", "RunningBatch"]


@dataclass
class Rows:
    """Rows joining a resumed decoding (:meth:`LoopDecoder.resume`).

    ``prior[r]``: row ``r``'s tokens generated so far, its last not yet in the cache (its next
    input; none may have ended); ``blocks[r]``: its row block (condition); ``cache``: the rows' KV
    cache; ``mask``: ``[rows, cache positions]``, 0 where a position must not be attended.
    """

    prior: list[list[int]]
    blocks: list[int]
    cache: Any
    mask: Tensor

    def check(self, max_new_tokens: int, row_blocks: int) -> None:
        n = len(self.prior)
        if len(self.blocks) != n or self.mask.shape[0] != n:
            raise ValueError(
                f"rows: {n} token lists, {len(self.blocks)} blocks and a mask of {self.mask.shape[0]} rows"
            )
        if any(not p or len(p) >= max_new_tokens for p in self.prior):
            raise ValueError(f"every resumed row needs 1 to {max_new_tokens - 1} tokens so far")
        if any(not 0 <= b < row_blocks for b in self.blocks):
            raise ValueError(f"blocks must be in 0..{row_blocks - 1}")
        if self.cache.get_seq_length() != self.mask.shape[1]:
            raise ValueError(
                f"the mask covers {self.mask.shape[1]} positions; the cache holds {self.cache.get_seq_length()}"
            )


class RunningBatch:
    """The running batch of the decoding loop: tokens per original row, each running row's block, mask and cache."""

    def __init__(self, out: list[list[int]], block: Tensor, mask: Tensor, cache: Any) -> None:
        self.out, self.block, self.mask, self.cache = out, block, mask, cache

    def blocks(self, k: int) -> list[Tensor]:
        """Each block's rows of the running batch."""
        return [(self.block == j).nonzero()[:, 0] for j in range(k)]

    def select(self, index: Tensor) -> None:
        self.cache.batch_select_indices(index)
        self.mask, self.block = self.mask[index], self.block[index]

    def pack(self) -> None:
        """Move every row's attended positions to the right end, in order, and drop the columns no row attends.

        Cached keys carry their rotary positions and masked positions get exactly zero attention,
        so this changes no result beyond the rounding of a shorter reduction; it keeps a batch of
        rows of different lengths (and rejected drafts) from costing every row the longest's width.
        """
        width = int(self.mask.sum(-1).max()) if self.mask.numel() else 0
        if width == self.mask.shape[1]:
            return
        index = torch.sort(self.mask, dim=-1, stable=True).indices[:, self.mask.shape[1] - width :]  # zeros first
        self.mask = self.mask.gather(1, index)
        for layer in self.cache.layers:
            where = index[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys, layer.values = layer.keys.gather(2, where), layer.values.gather(2, where)


class Refill:
    """Continuous batching for :meth:`LoopDecoder.resume`: more rows as running ones end, and rows far longer than
    the rest set aside (parked) to finish together at the end, so they do not widen every row's cache meanwhile."""

    #: a running row whose attended positions exceed this multiple of the median is parked
    park_ratio: float = 1.25

    def __init__(
        self,
        rows: Callable[[int, int], Rows | None],
        capacity: int,
        max_new_tokens: int,
        row_blocks: int,
        draft: Callable[[int, list[int]], Sequence[int]] | None,
        draft_tokens: int,
    ) -> None:
        self.rows, self.capacity, self.max_new_tokens, self.row_blocks = rows, capacity, max_new_tokens, row_blocks
        self.draft, self.draft_tokens = draft, draft_tokens
        self.exhausted = False
        self.parked: list[tuple[list[int], Any, Tensor, Tensor, Tensor]] = []  # rows, cache, mask, next pos, block

    @property
    def finished(self) -> bool:
        return self.exhausted and not self.parked

    def wants(self, running: int, fraction: float) -> bool:
        return not self.exhausted and self.capacity - running >= max(1, fraction * self.capacity)

    def take(
        self, state: RunningBatch, running: int, done: list[bool], over: list[bool]
    ) -> tuple[list[int], Tensor] | None:
        """Append more rows to ``state``; their original rows and next positions."""
        new = self.rows(self.capacity - running, state.mask.shape[1] if running else 0)
        if new is None:
            self.exhausted = True
            return None
        new.check(self.max_new_tokens, self.row_blocks)
        mask = new.mask.long()
        _join(state, running, new.cache, mask, torch.tensor(new.blocks, device=state.block.device))
        start = len(state.out)
        state.out.extend(list(p) for p in new.prior)
        done.extend([False] * len(new.prior))
        over.extend([False] * len(new.prior))
        # the next input of a new row is its last token, at the position after its attended tokens
        return list(range(start, len(state.out))), mask.sum(-1, keepdim=True)

    def park(self, state: RunningBatch, live: list[int], next_pos: Tensor) -> tuple[list[int], Tensor]:
        """Set aside the running rows far longer than the median (while the batch is a quarter full or more)."""
        if len(live) < max(2, self.capacity // 4):
            return live, next_pos
        valid = state.mask.sum(-1)
        wide = (valid > self.park_ratio * valid.float().median()).nonzero()[:, 0]
        if not len(wide):
            return live, next_pos
        cache = DynamicCache([(layer.keys[wide], layer.values[wide]) for layer in state.cache.layers])
        self.parked.append(
            ([live[a] for a in wide.tolist()], cache, state.mask[wide], next_pos[wide], state.block[wide])
        )
        parked = set(wide.tolist())
        keep = [a for a in range(len(live)) if a not in parked]
        state.select(torch.tensor(keep, dtype=torch.long, device=next_pos.device))
        return [live[a] for a in keep], next_pos[keep]

    def unpark(self, state: RunningBatch) -> tuple[list[int], Tensor]:
        """The parked rows as the running batch (it is empty)."""
        parked, self.parked = self.parked, []
        for at, (_, cache, mask, _, block) in enumerate(parked):
            _join(state, at, cache, mask, block)
        return [row for p in parked for row in p[0]], torch.cat([p[3] for p in parked])


def _join(state: RunningBatch, running: int, cache: Any, mask: Tensor, block: Tensor) -> None:
    """Append rows (their cache, mask and blocks) to the running batch, left-padding the narrower to a common width
    (``running`` 0: they replace it)."""
    width, mine = state.mask.shape[1], mask.shape[1]
    full = max(width, mine) if running else mine
    layers = []
    for old, add in zip(state.cache.layers, cache.layers):
        pairs = []
        for a, b in ((old.keys, add.keys), (old.values, add.values)):
            b = torch.nn.functional.pad(b, (0, 0, full - mine, 0))
            pairs.append(torch.cat([torch.nn.functional.pad(a, (0, 0, full - width, 0)), b]) if running else b)
        layers.append(tuple(pairs))
    state.cache.layers = DynamicCache(layers).layers
    mask = torch.nn.functional.pad(mask, (full - mine, 0))
    state.mask = torch.cat([torch.nn.functional.pad(state.mask, (full - width, 0)), mask]) if running else mask
    state.block = torch.cat([state.block, block]) if running else block
