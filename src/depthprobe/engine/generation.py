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

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from depthprobe.engine.grids import Condition, unique_ids
from depthprobe.engine.logits import _chunks, _row_hook
from depthprobe.engine.verify import MIN_SHARE, VerifyStats, verify_group
from depthprobe.evaluation.decode import Decoded, HookedDecoder, prefix_cache
from depthprobe.evaluation.fast_decode import BlockDecoder
from depthprobe.evaluation.generation import Generation, plan_generation
from depthprobe.interventions import ablate, bind_all, order_hooks, validate
from depthprobe.interventions.weights import hook_free_allowed
from depthprobe.models import model_dims

__all__ = ["DRAFTS", "HookedBlockDecoder", "generate_conditions"]

#: rows of one decode batch (conditions x documents) unless the caller says otherwise
DEFAULT_MAX_ROWS = 256
#: what ``draft=`` may be: verify the baseline's generation, or decode every token (None)
DRAFTS = ("baseline", None)
#: prompt-lookup drafted tokens checked per step after a divergence
LOOKUP_TOKENS = 0


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
        self._per_step: list[tuple[str, Callable[..., Any]]] | None = None

    def session(self, model: Any, batch: int) -> contextlib.AbstractContextManager[None]:
        # each condition's hooks on its row block; the loop refuses a batch that is not equal blocks
        return model.hooks(fwd_hooks=self._hooks(batch // self.row_blocks))

    @torch.inference_mode()
    def resume(self, model: Any, rows: Any, **kw: Any) -> Decoded:
        """:meth:`LoopDecoder.resume` with the hooks installed around each forward only (rows handed over in
        between are computed by other forwards, which these hooks must not touch)."""
        self._per_step = self._hooks(0)
        try:
            return super().resume(model, rows, **kw)
        finally:
            self._per_step = None

    def step(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        with model.hooks(fwd_hooks=self._per_step) if self._per_step else contextlib.nullcontext():
            return super().step(model, ids, mask, positions, cache)

    def step_all(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        with model.hooks(fwd_hooks=self._per_step) if self._per_step else contextlib.nullcontext():
            return super().step_all(model, ids, mask, positions, cache)

    def _hooks(self, b: int) -> list[tuple[str, Callable[..., Any]]]:
        return [
            (name, _row_hook(fn, self._block(j, b)))
            for j, bound in enumerate(self.bound)
            for name, fn in order_hooks(bound)
        ]

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
    groups = [exact[i : i + per_forward] for i in range(0, len(exact), per_forward)]
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
    draft: str | None = "baseline",
    baseline: Sequence[Sequence[int]] | None = None,
    lookup: int | None = None,
    stats: VerifyStats | None = None,
    min_share: float = MIN_SHARE,
) -> dict[str, list[Generation]]:
    """``{condition id: [Generation]}``: every prompt under every condition, conditions batched as row blocks.

    Equal to ``generate_until(model, prompts, until=..., max_gen_toks=..., batch_size=...,
    prefix=...)`` under each condition (hook-free where ``hook_free`` and the condition allows it,
    else under ``ablate``). ``max_rows`` bounds the rows of one decode batch (conditions x
    documents; None: every condition at once); memory grows with it (each row holds a KV cache).

    ``draft="baseline"`` (default) verifies the baseline's generation under every condition and
    decodes each row only from its first differing token (:mod:`depthprobe.engine.verify`):
    ``baseline`` gives the baseline's generated ids per prompt (``Generation.tokens``), else it is
    decoded here first; ``lookup`` drafted tokens per step are checked after a divergence (0:
    none; None: :data:`LOOKUP_TOKENS`). ``draft=None`` decodes every token of every condition. Both give the same generations.
    A group of conditions whose first decode batch suggests that verification saves less than
    ``min_share`` of the row steps decodes its other batches token by token (:data:`~depthprobe.engine.verify.MIN_SHARE`). ``stats`` (a
    :class:`~depthprobe.engine.verify.VerifyStats`) collects where the work went.
    """
    ids = unique_ids(conditions)
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    if draft not in DRAFTS:
        raise ValueError(f"draft must be one of {', '.join(map(repr, DRAFTS))}, got {draft!r}")
    lookup = LOOKUP_TOKENS if lookup is None else lookup
    if isinstance(lookup, bool) or not isinstance(lookup, int) or lookup < 0:
        raise ValueError(f"lookup must be a non-negative integer, got {lookup!r}")
    dims = model_dims(model)
    for cond in conditions:
        validate(dims, list(cond))
    plan = plan_generation(model, prompts, until=until, max_gen_toks=max_gen_toks, batch_size=batch_size, prefix=prefix)
    if not plan:
        return {cid: [] for cid in ids}
    if baseline is not None and (
        len(baseline) != len(prompts) or any(not 0 < len(t) <= max_gen_toks for t in baseline)
    ):
        raise ValueError(
            f"baseline must hold 1 to max_gen_toks={max_gen_toks} generated ids for each of the {len(prompts)} prompts"
        )
    per_forward = len(conditions) if max_rows is None else max(1, max_rows // batch_size)
    results: dict[str, list[Generation]] = {}
    todo = list(range(len(conditions)))
    if draft == "baseline":
        if baseline is None:  # one condition: as many documents per batch as rows allow
            base = _decode(
                model,
                _wide(model, plan, prompts, max_rows, until=until, max_gen_toks=max_gen_toks, prefix=prefix),
                [[]],
                [0],
                hook_free,
                attn_implementation,
            )[0]
            baseline = [g.tokens for g in base]
        else:
            base = [
                plan.generation(
                    i, t, plan.policy.is_done(t), plan.requests.prefix_ids is not None and i in plan.requests.reuse
                )
                for i, t in enumerate(baseline)
            ]
        todo = [i for i, c in enumerate(conditions) if len(c)]
        results.update({ids[i]: base for i, c in enumerate(conditions) if not len(c)})
    for group in _groups([conditions[i] for i in todo], per_forward, hook_free):
        group = [todo[g] for g in group]
        if draft is None:
            gens = _decode(model, plan, conditions, group, hook_free, attn_implementation)
        else:
            exact, members = hook_free and hook_free_allowed(conditions[group[0]]), [conditions[i] for i in group]
            decoder = (
                BlockDecoder(members, attn_implementation=attn_implementation)
                if exact
                else HookedBlockDecoder(model, members)
            )
            gens = verify_group(
                model,
                plan,
                decoder,
                baseline,
                hook_free=exact,
                attn_implementation=attn_implementation,
                lookup=lookup,
                max_rows=max_rows,
                stats=stats,
                min_share=min_share,
            )
        results.update({ids[i]: g for i, g in zip(group, gens)})
    return {cid: results[cid] for cid in ids}


def _wide(model: Any, plan: Any, prompts: list[str], max_rows: int | None, **kw: Any) -> Any:
    """``plan`` with ``max_rows`` documents per batch (all of them for None), for decoding one condition alone."""
    width = len(prompts) if max_rows is None else max_rows
    if width <= plan.requests.jobs[0][0].__len__():
        return plan
    return plan_generation(model, prompts, batch_size=width, **kw)


def _decode(
    model: Any,
    plan: Any,
    conditions: Sequence[Condition],
    group: list[int],
    hook_free: bool,
    attn_implementation: str | None,
) -> list[list[Generation]]:
    """Every token of the conditions ``group`` decoded as row blocks of each batch: ``[member][request]``."""
    members = [conditions[i] for i in group]
    exact = hook_free and hook_free_allowed(members[0])
    decoder = (
        BlockDecoder(members, attn_implementation=attn_implementation) if exact else HookedBlockDecoder(model, members)
    )
    return plan.run(model, decoder, copies=len(members))
