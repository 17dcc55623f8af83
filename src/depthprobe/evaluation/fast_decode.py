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

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from depthprobe import adapter
from depthprobe.evaluation.decode import Decoded, LoopDecoder
from depthprobe.evaluation.stops import StopPolicy
from depthprobe.interventions.weights import edited_model, hook_free_allowed, plain_model, require_exact

__all__ = ["HookFreeDecoder", "active_hooks", "decoder_for", "hook_free_allowed", "plain_model"]


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
            raise ValueError(f"HookFreeDecoder runs the plain model, but hooks are active on {hooks[0]} "
                             f"(and {len(hooks) - 1} more): pass the interventions to the decoder, not to ablate")

    def _enter(self, model: Any) -> Any:
        self._check(model)
        return edited_model(model, *self.interventions, attn_implementation=self.attn_implementation)

    def step(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        out = self._plain(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          logits_to_keep=1, **{self._cache_kw: cache})
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def __call__(self, model: Any, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int,
                 policy: StopPolicy, past_key_values: Any = None) -> Decoded:
        with self._enter(model) as plain:
            self._plain = plain
            self._cache_kw = next(iter(adapter.cache_kwargs(plain, None)))
            try:
                return super().__call__(model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                                        policy=policy, past_key_values=past_key_values)
            finally:
                self._plain = None

    @torch.inference_mode()
    def prefix_cache(self, model: Any, prefix_ids: list[int], device: Any) -> DynamicCache:
        """The KV cache of one shared prefix under this decoder's weight edits (skipped layers have none)."""
        cache = DynamicCache()
        ids = torch.tensor([prefix_ids], dtype=torch.long, device=device)
        positions = torch.arange(len(prefix_ids), device=device)[None]
        with self._enter(model) as plain:
            plain(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, logits_to_keep=1,
                  **adapter.cache_kwargs(plain, cache))
        return cache


def decoder_for(interventions: Iterable[Any], *, hook_free: bool = True,
                attn_implementation: str | None = None) -> HookFreeDecoder | None:
    """The hook-free decoder of a condition when every intervention allows it (and ``hook_free``), else None
    (the caller then applies the condition with ``ablate`` and decodes through the hooks)."""
    flat = list(interventions)
    if hook_free and hook_free_allowed(flat):
        return HookFreeDecoder(flat, attn_implementation=attn_implementation)
    return None
