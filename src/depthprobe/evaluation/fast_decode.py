"""The exact hook-free decoder: greedy decoding on the plain Hugging Face model with edited weights.

The hook path (:class:`~depthprobe.evaluation.decode.HookedDecoder`) runs every token through
the bridge's hook points, about half of Hugging Face ``generate``'s speed per token. When every
intervention of a condition has an exact weight edit (``exact_weight_edit``: skip_layer,
skip_attn, skip_mlp, zero_head, zero_kv_group, zero_head_weights, patch_o_proj),
:class:`HookFreeDecoder` runs the same decoding loop on the plain Hugging Face model that shares
the bridge's tensors, with an edited copy of only the touched tensors swapped in for the call
(:func:`depthprobe.interventions.weights.edited_model`) and restored afterwards, even on error.
With the bridge's own attention implementation (eager) it is token-identical to the hook path
(tests); ``attn_implementation="sdpa"`` is faster and rounds differently, so a run records it.

:func:`decoder_for` picks the decoder of a condition: hook-free when every intervention allows
it, else the hooks (applied by the caller with ``ablate``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from depthprobe import adapter
from depthprobe.evaluation.decode import Decoded, LoopDecoder
from depthprobe.interventions.weights import (
    RowEdits,
    edited_model,
    hook_free_allowed,
    kept_layers,
    plain_model,
    require_exact,
)

__all__ = ["BlockDecoder", "HookFreeDecoder", "active_hooks", "decoder_for", "hook_free_allowed", "plain_model"]


def active_hooks(model: Any) -> list[str]:
    """Names of the model's hook points that have forward hooks installed now."""
    hook_dict = getattr(model, "hook_dict", {}) or {}
    return [name for name, hp in hook_dict.items() if len(getattr(hp, "_forward_hooks", ()))]


class HookFreeDecoder(LoopDecoder):
    """KV-cached greedy decoding on the plain Hugging Face model under ``interventions`` as weight edits.

    Refuses a model with hooks active (they would be silently ignored): pass the condition here
    instead of wrapping the call in ``ablate``. The weights are edited for the duration of each
    call (prefix cache or decode batch) and restored after it.
    """

    def __init__(self, interventions: Iterable[Any] = (), *, attn_implementation: str | None = None) -> None:
        self.interventions = tuple(require_exact(interventions))
        self.attn_implementation = attn_implementation
        self._plain: Any = None
        self._cache_kw = "past_key_values"

    def _check(self, model: Any) -> None:
        hooks = active_hooks(model)
        if hooks:
            raise ValueError(
                f"HookFreeDecoder runs the plain model, but hooks are active on {hooks[0]} "
                f"(and {len(hooks) - 1} more): pass the interventions to the decoder, not to ablate"
            )

    def _enter(self, model: Any) -> Any:
        self._check(model)
        return edited_model(model, *self.interventions, attn_implementation=self.attn_implementation)

    def step(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        out = self._plain(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: cache},
        )
        return out.logits[:, -1, :]

    def step_all(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        out = self._plain(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=ids.shape[1],
            **{self._cache_kw: cache},
        )
        return out.logits

    @contextlib.contextmanager
    def session(self, model: Any, batch: int) -> Iterator[None]:
        with torch.inference_mode(), self._session(model):
            yield

    @torch.inference_mode()
    def resume(self, model: Any, rows: Any, **kw: Any) -> Decoded:
        with self._session(model):
            return super().resume(model, rows, **kw)

    @contextlib.contextmanager
    def _session(self, model: Any) -> Iterator[None]:
        with self._enter(model) as plain:
            self._plain = plain
            self._cache_kw = next(iter(adapter.cache_kwargs(plain, None)))
            try:
                yield
            finally:
                self._plain = None

    @torch.inference_mode()
    def prefix_cache(self, model: Any, prefix_ids: list[int], device: Any) -> DynamicCache:
        """The KV cache of one shared prefix under this decoder's weight edits (skipped layers have none)."""
        cache = DynamicCache()
        ids = torch.tensor([prefix_ids], dtype=torch.long, device=device)
        positions = torch.arange(len(prefix_ids), device=device)[None]
        with self._enter(model) as plain:
            plain(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                position_ids=positions,
                logits_to_keep=1,
                **adapter.cache_kwargs(plain, cache),
            )
        return cache


class BlockDecoder(HookFreeDecoder):
    """Greedy decoding of ``k`` conditions at once on the plain model: row block ``j`` under ``conditions[j]``.

    A batch of ``k * B`` rows is ``k`` copies of the same ``B`` documents; each block decodes under
    its own condition's exact weight edits applied row-wise
    (:class:`~depthprobe.interventions.weights.RowEdits`), so block ``j`` equals
    ``HookFreeDecoder(conditions[j])`` on those documents (up to the rounding of a larger batch;
    greedy tokens are checked equal in the tests). Where the blocks still agree, the work is
    shared: the few-shot prefix (:meth:`prefix_cache`) and the prompts (the first forward) run
    unablated once, and each condition only from its first edited layer on (conditions with the
    same first layer together). The one-token decode steps run all blocks in one forward, and rows
    that have ended leave it (:attr:`~depthprobe.evaluation.decode.LoopDecoder.compact`).
    """

    #: prompt tokens (rows x positions) of one forward of the shared first step; bounds its attention memory
    prefill_tokens = 16384
    compact = True

    def __init__(self, conditions: Sequence[Iterable[Any]], *, attn_implementation: str | None = None) -> None:
        super().__init__((), attn_implementation=attn_implementation)
        self.conditions = [tuple(c) for c in conditions]
        if not self.conditions:
            raise ValueError("BlockDecoder needs at least one condition")
        self.row_blocks = len(self.conditions)
        self._edits: RowEdits | None = None

    def row_edits(self, model: Any) -> RowEdits:
        """The conditions' row-wise weight edits on ``model``'s plain Hugging Face model (built once)."""
        return self._rows(model)

    def _rows(self, model: Any) -> RowEdits:
        if self._edits is None:
            self._edits = RowEdits(model, self.conditions, attn_implementation=self.attn_implementation)
            self._cache_kw = next(iter(adapter.cache_kwargs(self._edits.plain, None)))
        return self._edits

    def _enter(self, model: Any) -> Any:
        self._check(model)
        return contextlib.nullcontext(self._rows(model).plain)

    def step(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        with self._rows(model).applied(block_rows=self.block_rows):
            return super().step(model, ids, mask, positions, cache)

    def step_all(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        with self._rows(model).applied(block_rows=self.block_rows):
            return super().step_all(model, ids, mask, positions, cache)

    def prefill(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        return self._shared_forward(ids, mask, positions, cache)

    @torch.inference_mode()
    def prefix_cache(self, model: Any, prefix_ids: list[int], device: Any) -> DynamicCache:
        """One cache row per condition for a shared prefix (unablated below each condition's first edited layer)."""
        self._check(model)
        self._rows(model)
        k = len(self.conditions)
        ids = torch.tensor([prefix_ids], dtype=torch.long, device=device).repeat(k, 1)
        cache = DynamicCache()
        self._shared_forward(
            ids, torch.ones_like(ids), torch.arange(len(prefix_ids), device=device)[None].repeat(k, 1), cache
        )
        return cache

    def _shared_forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        """Last-position logits of one forward of ``k`` identical row blocks, block ``j`` under condition ``j``;
        ``cache`` (``k * B`` rows, possibly empty) is extended in place.

        The blocks' inputs and caches agree below each condition's first edited layer ``f_j`` (the
        cache rows there are unablated), so one unablated pass over ``B`` rows computes those
        layers for everyone, and condition ``j`` runs layers ``f_j..`` only, from the residual
        stream that pass recorded.
        """
        edits = self._edits
        assert edits is not None
        plain, n_layers, k = edits.plain, edits.n_layers, len(self.conditions)
        if ids.shape[0] % k:
            raise ValueError(f"a batch of {ids.shape[0]} rows cannot hold {k} equal row blocks")
        b = ids.shape[0] // k
        firsts = [edits.first_layer(j) for j in range(k)]
        starts = sorted({f for f in firsts if f < n_layers})
        top = max(firsts)  # the block whose cache rows are unablated below `top`
        stop = n_layers if top == n_layers else starts[-1] + 1  # through the last start, whose input is recorded
        past = [(layer.keys, layer.values) for layer in cache.layers if getattr(layer, "is_initialized", True)]

        def rows(blocks: list[int]) -> Tensor:
            return torch.cat([torch.arange(j * b, (j + 1) * b, device=ids.device) for j in blocks])

        def sub_cache(blocks: list[int], first: int, last: int) -> DynamicCache:
            sub = DynamicCache()
            index = rows(blocks)
            for i, (keys, values) in enumerate(past[first:last]):
                sub.update(keys[index], values[index], i)
            return sub

        entering: dict[int, Tensor] = {}

        def record(layer: int) -> Any:
            def hook(module: Any, args: tuple[Any, ...]) -> None:
                entering[layer] = args[0]

            return hook

        base = sub_cache([firsts.index(top)], 0, stop)
        handles = [plain.model.layers[f].register_forward_pre_hook(record(f)) for f in starts]
        try:
            with kept_layers(plain, list(range(stop))):
                base_logits = self._logits(plain, ids[:b], mask[:b], positions[:b], base)
        finally:
            for handle in handles:
                handle.remove()
        tails: dict[int, tuple[DynamicCache, int, Tensor]] = {}  # block -> (its group's cache, row offset, logits)
        per_pass = max(1, self.prefill_tokens // max(1, b * ids.shape[1]))
        for start in starts:
            members = [j for j, f in enumerate(firsts) if f == start]
            for at in range(0, len(members), per_pass):
                group = members[at : at + per_pass]
                m = len(group)
                tail = sub_cache(group, start, n_layers)
                with edits.applied(group, start=start, start_hidden=entering[start]) as p:
                    logits = self._logits(
                        p, ids[:b].repeat(m, 1), mask[:b].repeat(m, 1), positions[:b].repeat(m, 1), tail
                    )
                for r, j in enumerate(group):
                    tails[j] = (tail, r * b, logits[r * b : (r + 1) * b])
        out = DynamicCache()
        for layer in range(n_layers):
            keys, values = [], []
            for j, f in enumerate(firsts):
                if layer < f:
                    keys.append(base.layers[layer].keys)
                    values.append(base.layers[layer].values)
                else:
                    tail, offset, _ = tails[j]
                    keys.append(tail.layers[layer - f].keys[offset : offset + b])
                    values.append(tail.layers[layer - f].values[offset : offset + b])
            out.update(torch.cat(keys), torch.cat(values), layer)
        cache.layers = out.layers
        return torch.cat([base_logits if f == n_layers else tails[j][2] for j, f in enumerate(firsts)])

    def _logits(self, plain: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        out = plain(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: cache},
        )
        return out.logits[:, -1, :]


def decoder_for(
    interventions: Iterable[Any], *, hook_free: bool = True, attn_implementation: str | None = None
) -> HookFreeDecoder | None:
    """The hook-free decoder of a condition when every intervention allows it (and ``hook_free``), else None
    (the caller then applies the condition with ``ablate`` and decodes through the hooks)."""
    flat = list(interventions)
    if hook_free and hook_free_allowed(flat):
        return HookFreeDecoder(flat, attn_implementation=attn_implementation)
    return None
