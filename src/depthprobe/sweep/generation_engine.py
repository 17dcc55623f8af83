"""Generation sweeps with conditions batched: rows are (condition, document) pairs of one decode batch.

One ``generate_until`` per condition decodes ``batch_size`` documents per forward; here the
documents of one batch are decoded under ``k`` conditions at once (``k * batch_size`` rows), row
block ``j`` under condition ``j``. Conditions whose every intervention has an exact weight edit
run on the plain Hugging Face model with the edits applied row-wise
(:class:`~depthprobe.evaluation.fast_decode.BlockDecoder`: no hooks, and the few-shot prefix's
KV cache computed once unablated and per condition only from its first edited layer on); the
others (mean ablation, hook-only kinds) run through the bridge with the engine's row-block hooks
(:class:`HookedBlockDecoder`). Request preparation, batching order and the stop policy are
``generate_until``'s (:class:`~depthprobe.evaluation.generation.GenerationPlan`), so each
condition's generations equal its own ``generate_until``, token for token, up to the float32
rounding of a larger batch (tested on the tiny models and the organisms, with margins).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from depthprobe.evaluation.decode import Decoded, HookedDecoder, prefix_cache
from depthprobe.evaluation.fast_decode import BlockDecoder
from depthprobe.evaluation.generation import Generation, plan_generation
from depthprobe.evaluation.stops import StopPolicy
from depthprobe.interventions import ablate, bind_all, order_hooks, validate
from depthprobe.interventions.weights import hook_free_allowed
from depthprobe.models import model_dims
from depthprobe.sweep.engine import _chunks, _row_hook
from depthprobe.sweep.grids import Condition, unique_ids

__all__ = ["HookedBlockDecoder", "generate_conditions"]

#: rows of one decode batch (conditions x documents) unless the caller says otherwise
DEFAULT_MAX_ROWS = 256


class HookedBlockDecoder(HookedDecoder):
    """Decoding through the bridge with row block ``j`` of every batch under ``conditions[j]``'s hooks.

    For conditions without an exact weight edit (mean ablation, hook-only kinds). Conditions that
    share a stateful intervention (an o_proj patch stashes ``z``) must not share one decoder.
    Rows that have ended leave the batch (:attr:`~depthprobe.evaluation.decode.LoopDecoder.compact`).
    """

    compact = True

    def __init__(self, model: Any, conditions: Sequence[Condition]) -> None:
        self.conditions = [list(c) for c in conditions]
        self.bound = [bind_all(model, c) for c in self.conditions]
        self.row_blocks = len(self.conditions)

    def __call__(self, model: Any, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int,
                 policy: StopPolicy, past_key_values: Any = None) -> Decoded:
        b = input_ids.shape[0] // self.row_blocks  # the loop refuses a batch that is not equal blocks
        hooks = [(name, _row_hook(fn, self._block(j, b)))
                 for j, bound in enumerate(self.bound) for name, fn in order_hooks(bound)]
        with model.hooks(fwd_hooks=hooks):
            return super().__call__(model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                                    policy=policy, past_key_values=past_key_values)

    def _block(self, j: int, b: int) -> Callable[[], slice | Tensor]:
        """Block ``j``'s rows of the running batch (``b`` rows per block before any row ended)."""
        def rows() -> slice | Tensor:
            return slice(j * b, (j + 1) * b) if self.block_rows is None else self.block_rows[j]
        return rows

    def prefix_cache(self, model: Any, prefix_ids: list[int], device: Any) -> DynamicCache:
        """One cache row per condition: the prefix under each condition's hooks."""
        caches = []
        for cond in self.conditions:
            with ablate(model, *cond):
                caches.append(prefix_cache(model, prefix_ids, device))
        out = caches[0]
        for idx, layer in enumerate(out.layers):
            layer.keys = torch.cat([c.layers[idx].keys for c in caches])
            layer.values = torch.cat([c.layers[idx].values for c in caches])
        return out


def _groups(conditions: Sequence[Condition], per_forward: int, hook_free: bool) -> list[list[int]]:
    """Conditions decoded together: exact ones (hook-free) and the rest (hooks) apart, at most ``per_forward`` each."""
    exact = [i for i, c in enumerate(conditions) if hook_free and hook_free_allowed(c)]
    hooked = [i for i in range(len(conditions)) if i not in set(exact)]
    groups = [exact[i:i + per_forward] for i in range(0, len(exact), per_forward)]
    return groups + (_chunks(conditions, hooked, per_forward) if hooked else [])


@torch.inference_mode()
def generate_conditions(
    model: torch.nn.Module,
    prompts: list[str],
    conditions: Sequence[Condition],
    *,
    until: list[str],
    max_gen_toks: int = 256,
    batch_size: int = 8,
    prefix: str | None = None,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    hook_free: bool = True,
    attn_implementation: str | None = None,
) -> dict[str, list[Generation]]:
    """``{condition id: [Generation]}``: every prompt under every condition, conditions batched as row blocks.

    Equal to ``generate_until(model, prompts, until=..., max_gen_toks=..., batch_size=...,
    prefix=...)`` under each condition (hook-free where ``hook_free`` and the condition allows it,
    else under ``ablate``). ``max_rows`` bounds the rows of one decode batch (conditions x
    documents; None: every condition at once); memory grows with it (each row holds a KV cache).
    """
    ids = unique_ids(conditions)
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    dims = model_dims(model)
    for cond in conditions:
        validate(dims, list(cond))
    plan = plan_generation(model, prompts, until=until, max_gen_toks=max_gen_toks, batch_size=batch_size,
                           prefix=prefix)
    if not plan:
        return {cid: [] for cid in ids}
    per_forward = len(conditions) if max_rows is None else max(1, max_rows // batch_size)
    results: dict[str, list[Generation]] = {}
    for group in _groups(conditions, per_forward, hook_free):
        members = [conditions[i] for i in group]
        exact = hook_free and hook_free_allowed(members[0])
        decoder = BlockDecoder(members, attn_implementation=attn_implementation) if exact \
            else HookedBlockDecoder(model, members)
        for i, gens in zip(group, plan.run(model, decoder, copies=len(members))):
            results[ids[i]] = gens
    return {cid: results[cid] for cid in ids}
