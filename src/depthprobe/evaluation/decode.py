"""The decoder: batched greedy decoding with a KV cache, one bridge forward per token.

This is the seam for a faster backend: :class:`Decoder` is what request preparation
(:mod:`depthprobe.evaluation.generation`) calls, and :class:`HookedDecoder` is the implementation
that runs every step through the hooked model, so hooks active around a call (``with
model.hooks(...)``, ``depthprobe.ablate``) fire at prefill and at every decode step. It
reproduces Hugging Face ``generate(do_sample=False)`` token for token (left padding,
mask-derived position ids, ``DynamicCache``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from transformers import DynamicCache

from depthprobe import adapter
from depthprobe.evaluation.stops import StopPolicy

__all__ = ["Decoded", "Decoder", "HookedDecoder", "LoopDecoder", "prefix_cache"]


@dataclass(frozen=True)
class Decoded:
    """Generated ids per row, up to and including the token that ended it, and whether it ended by itself.

    ``row_steps`` counts the rows of every forward that was run (prefill included): the decoding's
    work, which dropping ended rows (:attr:`LoopDecoder.compact`) reduces.
    """

    tokens: list[list[int]]
    hit_stop: list[bool]
    row_steps: int = 0


class Decoder(Protocol):
    """Greedy continuation of a left-padded batch under a stop policy."""

    def __call__(self, model: Any, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int,
                 policy: StopPolicy, past_key_values: Any = None) -> Decoded: ...


def _forward_last_logits(model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
    """Logits of the last position only (HF generate's ``logits_to_keep=1``)."""
    logits = model(ids, return_type="logits", attention_mask=mask, position_ids=positions, logits_to_keep=1,
                   **adapter.cache_kwargs(model, cache))
    return logits[:, -1, :]


@torch.inference_mode()
def prefix_cache(model: Any, prefix_ids: list[int], device: Any) -> DynamicCache:
    """The KV cache of one shared prefix, computed under the hooks active now."""
    cache = DynamicCache()
    ids = torch.tensor([prefix_ids], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    positions = torch.arange(len(prefix_ids), device=device)[None]
    model(ids, return_type="logits", attention_mask=mask, position_ids=positions, logits_to_keep=1,
          **adapter.cache_kwargs(model, cache))
    return cache


class LoopDecoder:
    """KV-cached greedy decoding of a left-padded batch, one forward per token; subclasses give the forward.

    Reproduces Hugging Face ``generate(do_sample=False)`` token for token (left padding,
    mask-derived position ids, ``DynamicCache``). :meth:`step` returns the last position's
    logits ``[batch, vocab]`` of one forward that appends to ``cache``.

    With :attr:`compact`, rows that have ended leave the batch (with their KV cache) once they are
    a quarter of it, so a batch whose rows end at different steps stops paying for the ended ones;
    a decoder whose batches are :attr:`row_blocks` equal blocks (one condition each) then finds
    each block's rows of the running batch in :attr:`block_rows`. Hugging Face
    ``generate`` and lm-eval keep ended rows, and a smaller batch may round differently, so the
    evaluator's decoders, which reproduce their batches, leave it off; the sweep engine's
    decoders, whose batches differ from them anyway, turn it on.
    """

    #: drop ended rows from the running batch (and their cache rows)
    compact: bool = False
    #: the fraction of the running batch that must have ended before it is compacted (each compaction copies the cache)
    compact_fraction: float = 0.25
    #: equal row blocks of every batch: block ``j`` is rows ``j*B .. (j+1)*B`` (a sweep decoder's ``j``-th condition)
    row_blocks: int = 1
    #: each block's rows (indices into the running batch) once ended rows were dropped; None while the batch is whole
    block_rows: list[Tensor] | None = None

    def step(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        raise NotImplementedError

    def prefill(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        """The first forward (the prompts); a decoder may compute it differently from the one-token steps."""
        return self.step(model, ids, mask, positions, cache)

    def __call__(self, model: Any, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int,
                 policy: StopPolicy, past_key_values: Any = None) -> Decoded:
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
        tokenizer = model.tokenizer
        pad = adapter.pad_token_id(tokenizer) if tokenizer is not None else 0
        device = input_ids.device
        mask = attention_mask.to(device=device, dtype=torch.long)
        # Hugging Face generate: positions are the running count of attended tokens.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        step_pos = positions[:, -n_new:]
        step_ids = input_ids
        out: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        live = list(range(batch))  # the original row of each row of the running batch
        self.block_rows, row_steps = None, 0
        try:
            for n in range(max_new_tokens):
                logits = (self.step if n else self.prefill)(model, step_ids, mask, step_pos, cache)
                row_steps += len(live)
                next_ids = logits.float().argmax(dim=-1).tolist()
                for at, tok in enumerate(next_ids):
                    row = live[at]
                    if done[row]:
                        next_ids[at] = pad
                        continue
                    out[row].append(tok)
                    done[row] = policy.is_done(out[row])
                if all(done):
                    break
                ended = sum(done[row] for row in live)
                if self.compact and ended and ended >= self.compact_fraction * len(live):
                    keep = [at for at, row in enumerate(live) if not done[row]]
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    mask, step_pos = mask[index], step_pos[index]
                    next_ids, live = [next_ids[at] for at in keep], [live[at] for at in keep]
                    block = torch.tensor(live, device=device) // (batch // self.row_blocks)
                    self.block_rows = [(block == j).nonzero()[:, 0] for j in range(self.row_blocks)]
                step_ids = torch.tensor(next_ids, dtype=input_ids.dtype, device=device)[:, None]
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                step_pos = step_pos[:, -1:] + 1
        finally:
            self.block_rows = None
        return Decoded(out, list(done), row_steps)


class HookedDecoder(LoopDecoder):
    """KV-cached greedy decoding through the hooked model (every token a bridge forward)."""

    def step(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        return _forward_last_logits(model, ids, mask, positions, cache)
