"""The engine: logits of many conditions, reusing the unablated computation.

It rests on one fact: before the first layer a condition touches, its residual stream equals
the unablated one. So per batch the baseline is run once, caching ``blocks.{l}.hook_resid_pre``,
and each condition runs only the decoder layers from its first intervened layer on (a real
tail-only forward, :func:`depthprobe.adapter.tail_only`: the same block objects, so hook
names, rotary embeddings, the mask, the final norm and the unembedding are the model's own).
Layers an intervention makes the identity (declared ``identity_block``) are left out of the
tail. Conditions with the same tail run together as row blocks of one batch, each block with
its own hooks, so the per-head sweep of a layer costs one batched pass through one layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from depthprobe import adapter
from depthprobe.engine.grids import BASELINE, Condition, condition_id, unique_ids
from depthprobe.evaluation.loglikelihood import DocScores, encode_pair
from depthprobe.identity import ResolvedModel, resolved
from depthprobe.interventions import bind_all, order_hooks, validate
from depthprobe.types import TokenMask, Tokens

__all__ = ["condition_logits", "iter_condition_logits", "plan_tails", "score_conditions"]


def _row_hook(
    fn: Callable[..., Tensor | None], rows: slice | Callable[[], slice | Tensor]
) -> Callable[..., Tensor | None]:
    """Run an intervention's hook on one row block of the batch only (``rows``, or a callable giving them now)."""

    def hook(tensor: Tensor, hook: Any) -> Tensor | None:
        where = rows() if callable(rows) else rows
        if isinstance(where, Tensor) and not where.numel():
            return None  # the block has no rows left in the batch
        part = tensor[where]
        out = fn(part, hook)
        if out is None:
            if not isinstance(where, Tensor):
                return None  # edited in place through the view
            out = part  # an index gives a copy: edited in place, it goes back below
        tensor = tensor.clone()
        tensor[where] = out
        return tensor

    hook.__name__ = getattr(fn, "__name__", "hook")
    return hook


def plan_tails(conditions: Sequence[Condition], n_layers: int) -> dict[tuple[int, tuple[int, ...]], list[int]]:
    """Group condition indices by (start layer, tail layers); identity layers are dropped from the tail."""
    groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for i, cond in enumerate(conditions):
        if not len(cond):
            continue
        start = min(iv.first_layer for iv in cond)
        skipped = {iv.layer for iv in cond if iv.identity_block}
        tail = tuple(layer for layer in range(start, n_layers) if layer not in skipped)
        groups.setdefault((start, tail), []).append(i)
    return groups


def _chunks(conditions: Sequence[Condition], members: list[int], size: int) -> list[list[int]]:
    """Pack conditions into forwards of at most ``size``; conditions sharing a ``stateful`` intervention
    (an o_proj patch stashes ``z`` between two hooks) go to different forwards."""
    chunks: list[tuple[list[int], set[str]]] = []
    for i in members:
        stateful = {iv.id for iv in conditions[i] if iv.stateful}
        for chunk, used in chunks:
            if len(chunk) < size and not (stateful & used):
                chunk.append(i)
                used |= stateful
                break
        else:
            chunks.append(([i], set(stateful)))
    return [chunk for chunk, _ in chunks]


def iter_condition_logits(
    model: torch.nn.Module | ResolvedModel,
    input_ids: Tokens,
    attention_mask: TokenMask | None,
    conditions: Sequence[Condition],
    *,
    max_rows: int | None = None,
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(condition id, logits [batch, pos, vocab])`` for every condition, equal to a full forward under ``ablate``.

    The baseline runs once; each condition runs only from its first intervened layer on,
    conditions sharing a tail together as row blocks (at most ``max_rows`` rows per forward).
    The baseline's logits are yielded first (as ``"baseline"``) when it is among the conditions.
    Conditions come out grouped by tail, not in input order.
    """
    resolved_model = resolved(model)
    model, dims = resolved_model.model, resolved_model.dims
    for cond in conditions:
        validate(dims, list(cond))
    if max_rows is not None and max_rows < input_ids.shape[0]:
        raise ValueError(f"max_rows={max_rows} is smaller than the batch ({input_ids.shape[0]} rows)")
    return _iter_condition_logits(model, input_ids, attention_mask, conditions, dims, max_rows)


def _iter_condition_logits(model, input_ids, attention_mask, conditions, dims, max_rows):  # type: ignore[no-untyped-def]
    # A plain generator: typeguard cannot instrument jaxtyping annotations on generator functions.
    # Bind every condition before any hook is installed (binding may read the unablated model);
    # each condition runs in exactly one forward, so its bound hooks (and their state) serve once.
    bound = [bind_all(model, list(c)) for c in conditions]
    plan = plan_tails(conditions, dims.n_layers)
    starts = sorted({start for start, _ in plan})
    cache: dict[int, Tensor] = {}

    def keep(layer: int) -> Callable[..., None]:
        def hook(resid: Tensor, hook: Any) -> None:
            cache[layer] = resid.detach()

        return hook

    with torch.no_grad():
        with model.hooks(fwd_hooks=[(f"blocks.{s}.hook_resid_pre", keep(s)) for s in starts]):
            base = model(input_ids, attention_mask=attention_mask, use_cache=False)
        if any(not len(c) for c in conditions):
            yield BASELINE, base
        del base
        batch = input_ids.shape[0]
        per_forward = len(conditions) if max_rows is None else max(1, max_rows // batch)
        for (start, tail), members in plan.items():
            for chunk in _chunks(conditions, members, per_forward):
                k = len(chunk)
                resid = cache[start].repeat(k, 1, 1)
                hooks: list[tuple[str, Callable[..., Any]]] = [("hook_embed", lambda x, hook, r=resid: r)]
                for j, i in enumerate(chunk):
                    rows = slice(j * batch, (j + 1) * batch)
                    hooks += [(name, _row_hook(fn, rows)) for name, fn in order_hooks(bound[i])]
                ids = input_ids.repeat(k, 1)
                mask = attention_mask.repeat(k, 1) if attention_mask is not None else None
                with adapter.tail_only(model, tail), model.hooks(fwd_hooks=hooks):
                    logits = model(ids, attention_mask=mask, use_cache=False)
                for j, i in enumerate(chunk):
                    yield condition_id(conditions[i]), logits[j * batch : (j + 1) * batch]


def condition_logits(
    model: torch.nn.Module | ResolvedModel,
    input_ids: Tokens,
    attention_mask: TokenMask | None,
    conditions: Sequence[Condition],
    *,
    max_rows: int | None = None,
) -> dict[str, Tensor]:
    """Logits ``[batch, pos, vocab]`` of every condition (in input order), reusing the unablated computation; see :func:`iter_condition_logits`."""
    ids = unique_ids(conditions)
    out = dict(iter_condition_logits(model, input_ids, attention_mask, conditions, max_rows=max_rows))
    return {i: out[i] for i in ids}


def score_conditions(
    model: torch.nn.Module | ResolvedModel,
    requests: Sequence[tuple[str, Sequence[str]]],
    conditions: Sequence[Condition],
    *,
    batch_size: int = 16,
    max_rows: int | None = None,
) -> dict[str, list[Any]]:
    """Multiple-choice log-likelihoods of every request under every condition, through the engine.

    ``requests[i] = (context, [continuation, ...])`` as for
    ``depthprobe.evaluation.loglikelihood.score_choices``; returns ``{condition id: [DocScores]}``.
    Tokenization is lm-eval's (``encode_pair``) and each request is scored on lm-eval's own
    window ``(ctx+cont)[-(max_len+1):][:-1]``, right-padded with id 0 and no mask; identical
    windows share a row. Each batch of windows runs the baseline once for all conditions.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    resolved_model = resolved(model)
    model = resolved_model.model
    tokenizer = model.tokenizer
    max_len = adapter.max_context_length(model, tokenizer)
    device = next(model.parameters()).device
    windows: dict[tuple[int, ...], int] = {}
    where: list[list[tuple[int, int, list[int]]]] = []  # per request, per choice: (row, window length, cont)
    truncated = []
    for i, (context, continuations) in enumerate(requests):
        per_choice, cut = [], False
        for cont in continuations:
            ctx_ids, cont_ids = encode_pair(tokenizer, context, cont)
            if not cont_ids:
                raise ValueError(f"request {i}: continuation {cont!r} tokenizes to zero tokens")
            cut |= len(ctx_ids) + len(cont_ids) > max_len + 1
            window = tuple((ctx_ids + cont_ids)[-(max_len + 1) :][:-1])
            per_choice.append((windows.setdefault(window, len(windows)), len(window), cont_ids))
        where.append(per_choice)
        truncated.append(cut)
    rows = list(windows)
    ids = [condition_id(c) for c in conditions]
    lls = {cid: [[0.0] * len(w) for w in where] for cid in ids}
    greedy = {cid: [[True] * len(w) for w in where] for cid in ids}
    by_row: dict[int, list[tuple[int, int, int, list[int]]]] = {}
    for i, per_choice in enumerate(where):
        for j, (r, n, cont) in enumerate(per_choice):
            by_row.setdefault(r, []).append((i, j, n, cont))
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
    for at in range(0, len(order), batch_size):
        batch = order[at : at + batch_size]
        width = max(len(rows[r]) for r in batch)
        tokens = torch.zeros((len(batch), width), dtype=torch.long, device=device)
        for b, r in enumerate(batch):
            tokens[b, : len(rows[r])] = torch.tensor(rows[r], dtype=torch.long, device=device)
        for cid, logits in iter_condition_logits(resolved_model, tokens, None, conditions, max_rows=max_rows):
            logprobs = torch.log_softmax(logits, dim=-1)
            for b, r in enumerate(batch):
                for i, j, n, cont in by_row[r]:
                    target = torch.tensor(cont, dtype=torch.long, device=device)
                    lp = logprobs[b, n - len(cont) : n]
                    lls[cid][i][j] = lp.gather(1, target[:, None])[:, 0].sum().item()
                    greedy[cid][i][j] = bool((lp.argmax(-1) == target).all())
    return {
        cid: [
            DocScores(tuple(lls[cid][i]), tuple(greedy[cid][i]), tuple(len(c) for _, _, c in where[i]), truncated[i])
            for i in range(len(where))
        ]
        for cid in ids
    }
