"""The decoder: batched greedy decoding with a KV cache, one bridge forward per token.

This is the seam for a faster backend: :class:`Decoder` is what request preparation
(:mod:`depthprobe.evaluation.generation`) calls, and :class:`HookedDecoder` is the implementation
that runs every step through the hooked model, so hooks active around a call (``with
model.hooks(...)``, ``depthprobe.ablate``) fire at prefill and at every decode step. It
reproduces Hugging Face ``generate(do_sample=False)`` token for token (left padding,
mask-derived position ids, ``DynamicCache``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from transformers import DynamicCache

from depthprobe import adapter
from depthprobe.evaluation.running import Refill, Rows, RunningBatch
from depthprobe.evaluation.stops import StopPolicy, StopWatch

__all__ = ["Decoded", "Decoder", "HookedDecoder", "LoopDecoder", "Rows", "prefix_cache"]


@dataclass(frozen=True)
class Decoded:
    """Generated ids per row, up to and including the token that ended it, and whether it ended by itself.

    ``row_steps`` counts the rows of every forward that was run (prefill included): the decoding's
    work, which dropping ended rows (:attr:`LoopDecoder.compact`) reduces.
    """

    tokens: list[list[int]]
    hit_stop: list[bool]
    row_steps: int = 0
    #: forwards run, and drafted tokens kept (:meth:`LoopDecoder.resume` with ``draft``)
    forwards: int = 0
    accepted: int = 0


class Decoder(Protocol):
    """Greedy continuation of a left-padded batch under a stop policy."""

    def __call__(
        self,
        model: Any,
        input_ids: Tensor,
        attention_mask: Tensor,
        *,
        max_new_tokens: int,
        policy: StopPolicy,
        past_key_values: Any = None,
    ) -> Decoded: ...


def _forward_last_logits(model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any, keep: int = 1) -> Tensor:
    """Logits of the last position only (HF generate's ``logits_to_keep=1``); ``keep`` > 1: ``[batch, keep, vocab]``."""
    logits = model(
        ids,
        return_type="logits",
        attention_mask=mask,
        position_ids=positions,
        logits_to_keep=keep,
        **adapter.cache_kwargs(model, cache),
    )
    return logits[:, -1, :] if keep == 1 else logits[:, -keep:, :]


@torch.inference_mode()
def prefix_cache(model: Any, prefix_ids: list[int], device: Any) -> DynamicCache:
    """The KV cache of one shared prefix, computed under the hooks active now."""
    cache = DynamicCache()
    ids = torch.tensor([prefix_ids], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    positions = torch.arange(len(prefix_ids), device=device)[None]
    model(
        ids,
        return_type="logits",
        attention_mask=mask,
        position_ids=positions,
        logits_to_keep=1,
        **adapter.cache_kwargs(model, cache),
    )
    return cache


class LoopDecoder:
    """KV-cached greedy decoding of a left-padded batch, one forward per token; subclasses give the forward.

    Reproduces Hugging Face ``generate(do_sample=False)`` token for token (left padding,
    mask-derived position ids, ``DynamicCache``). :meth:`step` returns the last position's
    logits ``[batch, vocab]`` of one forward that appends to ``cache``; :meth:`step_all` the
    logits of every position it was given (drafted tokens are checked with it).

    With :attr:`compact`, rows that have ended leave the batch (with their KV cache) once they are
    a quarter of it, so a batch whose rows end at different steps stops paying for the ended ones;
    a decoder whose batches are :attr:`row_blocks` equal blocks (one condition each) then finds
    each block's rows of the running batch in :attr:`block_rows`. Hugging Face
    ``generate`` and lm-eval keep ended rows, and a smaller batch may round differently, so the
    evaluator's decoders, which reproduce their batches, leave it off; the sweep engine's
    decoders, whose batches differ from them anyway, turn it on.

    :meth:`resume` continues rows that were already generating (the verification engine's rows
    after their first differing token): blocks of any sizes, each row with its own tokens so far
    and budget, more rows taken in as rows end, and optionally drafted tokens checked several at
    a time.
    """

    #: drop ended rows from the running batch (and their cache rows)
    compact: bool = False
    #: the fraction of the running batch that must have ended before it is compacted (each compaction copies the cache)
    compact_fraction: float = 0.25
    #: resumed decoding (:meth:`resume`) takes in more rows once this fraction of its places is free
    refill_fraction: float = 0.25
    #: equal row blocks of every batch: block ``j`` is rows ``j*B .. (j+1)*B`` (a sweep decoder's ``j``-th condition)
    row_blocks: int = 1
    #: each block's rows (indices into the running batch) once ended rows were dropped; None while the batch is whole
    block_rows: list[Tensor] | None = None

    def step(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        raise NotImplementedError

    def step_all(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        """Logits ``[batch, pos, vocab]`` of every position of ``ids`` (for checking drafted tokens)."""
        raise NotImplementedError(f"{type(self).__name__} cannot check drafted tokens (no step_all)")

    def prefill(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        """The first forward (the prompts); a decoder may compute it differently from the one-token steps."""
        return self.step(model, ids, mask, positions, cache)

    def session(self, model: Any, batch: int) -> contextlib.AbstractContextManager[None]:
        """What one whole ``__call__`` of ``batch`` rows runs inside: hooks or weight edits a subclass
        installs for its duration (none here)."""
        return contextlib.nullcontext()

    def __call__(
        self,
        model: Any,
        input_ids: Tensor,
        attention_mask: Tensor,
        *,
        max_new_tokens: int,
        policy: StopPolicy,
        past_key_values: Any = None,
    ) -> Decoded:
        with self.session(model, input_ids.shape[0]):
            return self._start(model, input_ids, attention_mask, max_new_tokens, policy, past_key_values)

    def _start(
        self,
        model: Any,
        input_ids: Tensor,
        attention_mask: Tensor,
        max_new_tokens: int,
        policy: StopPolicy,
        past_key_values: Any,
    ) -> Decoded:
        batch, n_new = input_ids.shape
        if batch % self.row_blocks:
            raise ValueError(f"a batch of {batch} rows cannot hold {self.row_blocks} equal row blocks")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if attention_mask.shape[0] != batch:
            raise ValueError(f"attention_mask batch {attention_mask.shape[0]} != input_ids batch {batch}")
        if past_key_values is not None:
            cache = copy.deepcopy(past_key_values)
            past_len = cache.get_seq_length()
            cache_batch = cache.layers[0].keys.shape[0] if past_len else batch
            if cache_batch != batch and cache_batch and batch % cache_batch == 0:
                cache.batch_repeat_interleave(batch // cache_batch)  # row r of the cache serves block r
            elif cache_batch != batch:
                raise ValueError(f"past_key_values batch {cache_batch} must divide the batch {batch}")
        else:
            cache, past_len = DynamicCache(), 0
        if attention_mask.shape[1] == n_new and past_len:
            attention_mask = torch.cat([attention_mask.new_ones(batch, past_len), attention_mask], dim=1)
        if attention_mask.shape[1] != past_len + n_new:
            raise ValueError(
                f"attention_mask has {attention_mask.shape[1]} positions; expected {n_new} "
                f"(new tokens) or {past_len + n_new} (cache + new tokens)"
            )
        mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
        # Hugging Face generate: positions are the running count of attended tokens.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        block = torch.arange(batch, device=input_ids.device) // (batch // self.row_blocks)
        state = RunningBatch([[] for _ in range(batch)], block, mask, cache)
        return self._loop(model, state, input_ids, positions[:, -n_new:], max_new_tokens, policy, None)

    def resume(
        self,
        model: Any,
        rows: Callable[[int, int], Rows | None],
        *,
        capacity: int,
        max_new_tokens: int,
        policy: StopPolicy,
        draft: Callable[[int, list[int]], Sequence[int]] | None = None,
        draft_tokens: int = 0,
    ) -> Decoded:
        """Continue generations already under way (the verification engine's rows after their first differing token).

        ``rows(n, width)`` hands over up to ``n`` more rows (:class:`Rows`, None when there are no more;
        ``width``: the running batch's cache width, 0 when it is empty, so rows of a similar length can be chosen):
        the loop takes ``capacity`` at first and, as rows end, takes more to fill the freed places
        (continuous batching), so a forward runs on up to ``capacity`` rows for as long as rows
        remain. ``Decoded`` lists the rows in the order they were handed over, each with its
        tokens so far included. ``draft(row, tokens)`` may propose up to ``draft_tokens`` tokens
        to follow a row's tokens: each forward checks them and keeps those equal to the greedy
        choice (exact greedy decoding; rejected positions stay in the cache, masked out).
        """
        if capacity < 1 or max_new_tokens < 1:
            raise ValueError(f"capacity and max_new_tokens must be >= 1, got {capacity} and {max_new_tokens}")
        first = rows(capacity, 0)
        if first is None:
            return Decoded([], [], 0)
        first.check(max_new_tokens, self.row_blocks)
        device = first.mask.device
        state = RunningBatch(
            [list(p) for p in first.prior], torch.tensor(first.blocks, device=device), first.mask.long(), first.cache
        )
        state.pack()
        ids = torch.tensor([[p[-1]] for p in first.prior], dtype=torch.long, device=device)
        state.mask = torch.cat([state.mask, state.mask.new_ones(len(first.prior), 1)], dim=1)
        positions = state.mask.sum(-1, keepdim=True) - 1
        refill = Refill(rows, capacity, max_new_tokens, self.row_blocks, draft, draft_tokens)
        return self._loop(model, state, ids, positions, max_new_tokens, policy, refill)

    def _loop(
        self,
        model: Any,
        state: RunningBatch,
        step_ids: Tensor,
        step_pos: Tensor,
        max_new_tokens: int,
        policy: StopPolicy,
        refill: Refill | None,
    ) -> Decoded:
        out, device = state.out, step_ids.device
        tokenizer = model.tokenizer
        pad = adapter.pad_token_id(tokenizer) if tokenizer is not None else 0
        draft = refill.draft if refill is not None else None
        self.block_rows = state.blocks(self.row_blocks) if refill is not None else None
        watch = StopWatch(policy)
        done = [False] * len(out)  # ended by EOS or a stop string
        over = [False] * len(out)  # ended: done, or out of budget
        live = list(range(len(out)))  # the original row of each row of the running batch
        row_steps, forwards, accepted, first = 0, 0, 0, refill is None
        proposed = [0] * len(out)  # drafted tokens in each running row's input (after its last token)
        try:
            while True:
                width = step_ids.shape[1]
                if draft is not None:
                    logits = self.step_all(model, step_ids, state.mask, step_pos, state.cache)
                    chosen = logits.float().argmax(dim=-1).tolist()
                else:
                    logits = (self.prefill if first else self.step)(model, step_ids, state.mask, step_pos, state.cache)
                    chosen = [[tok] for tok in logits.float().argmax(dim=-1).tolist()]
                first = False
                row_steps, forwards = row_steps + len(live), forwards + 1
                consumed = [1] * len(live)  # input positions now valid in the cache, per running row
                inputs = step_ids.tolist() if draft is not None else []
                for at, row in enumerate(live):
                    if over[row]:
                        continue
                    n = 0  # drafted tokens accepted: each equals the token chosen before it
                    while n < proposed[at] and inputs[at][n + 1] == chosen[at][n]:
                        n += 1
                    consumed[at], accepted = n + 1, accepted + n
                    for tok in chosen[at][: n + 1]:
                        out[row].append(tok)
                        budget = len(out[row]) >= max_new_tokens
                        keep = watch.done_at(row, out[row], final=budget)
                        if keep is not None:
                            del out[row][keep:]
                            done[row] = True
                        over[row] = done[row] or budget
                        if over[row]:
                            break
                ended = sum(over[row] for row in live)
                if ended == len(live) and (refill is None or refill.finished):
                    break
                if draft is not None:  # rejected drafts stay in the cache, masked out
                    cols = torch.arange(width, device=device)[None, :] < torch.tensor(consumed, device=device)[:, None]
                    state.mask[:, -width:] = cols.long()
                    next_pos = step_pos[:, :1] + torch.tensor(consumed, device=device)[:, None]
                else:  # after the prompts (or one token): the next position
                    next_pos = step_pos[:, -1:] + 1
                compact = self.compact or refill is not None  # a resumed batch always drops ended rows
                if compact and ended and (ended >= self.compact_fraction * len(live) or ended == len(live)):
                    keep = [at for at, row in enumerate(live) if not over[row]]
                    state.select(torch.tensor(keep, dtype=torch.long, device=device))
                    next_pos, live = next_pos[keep], [live[at] for at in keep]
                    if refill is not None:
                        live, next_pos = refill.park(state, live, next_pos)
                        state.pack()
                    self.block_rows = state.blocks(self.row_blocks)
                if refill is not None and refill.wants(len(live), self.refill_fraction):
                    added = refill.take(state, len(live), done, over)
                    if added:
                        next_pos = torch.cat([next_pos, added[1]])
                        live += added[0]
                        self.block_rows = state.blocks(self.row_blocks)
                        state.pack()
                if refill is not None and not live and refill.exhausted and refill.parked:
                    live, next_pos = refill.unpark(state)
                    self.block_rows = state.blocks(self.row_blocks)
                    state.pack()
                if not live:
                    break
                proposals = (
                    [
                        []
                        if over[row]
                        else list(draft(row, out[row]))[: min(refill.draft_tokens, max_new_tokens - len(out[row]) - 1)]
                        for row in live
                    ]
                    if draft is not None
                    else [[] for _ in live]
                )
                proposed = [len(p) for p in proposals]
                width = 1 + max(proposed)
                rows = [
                    [pad if over[row] else out[row][-1]] + p + [pad] * (width - 1 - len(p))
                    for row, p in zip(live, proposals)
                ]
                step_ids = torch.tensor(rows, dtype=step_ids.dtype, device=device)
                real = torch.tensor(
                    [[1] * (1 + len(p)) + [0] * (width - 1 - len(p)) for p in proposals],
                    dtype=state.mask.dtype,
                    device=device,
                )
                state.mask = torch.cat([state.mask, real], dim=1)
                step_pos = next_pos + torch.arange(width, device=device)[None, :]
        finally:
            self.block_rows = None
        return Decoded(out, list(done), row_steps, forwards, accepted)


class HookedDecoder(LoopDecoder):
    """KV-cached greedy decoding through the hooked model (every token a bridge forward)."""

    def step(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        return _forward_last_logits(model, ids, mask, positions, cache)

    def step_all(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        return _forward_last_logits(model, ids, mask, positions, cache, keep=ids.shape[1]).reshape(
            ids.shape[0], ids.shape[1], -1
        )
