"""The multiple-choice engine with both savings: the unablated prefix once per batch, each context once per condition.

:func:`~depthprobe.engine.logits.score_conditions` scores one window per choice (context and
choice together), so every condition recomputes each context once per choice; the
per-condition evaluator (:mod:`depthprobe.evaluation.loglikelihood`) computes each context once
and scores the choices on top of its KV cache, but recomputes the unablated layers per
condition. :func:`score_conditions_reuse` does both, per batch of documents:

1. the baseline runs the contexts (KV cache kept) and then the choices on top of it, caching
   ``blocks.{s}.hook_resid_pre`` of both at every layer ``s`` where some condition starts;
2. each condition runs only its tail layers (:func:`depthprobe.adapter.tail_only`) on the
   contexts, from the cached residual, into a KV cache of its own (conditions of one tail as
   row blocks of one forward, each block under its own hooks); the last context logits score
   every choice's first token;
3. its tail then runs the choices' remaining tokens from their cached residual on top of that
   cache, whose layers before the tail (and skipped layers, never read) are the baseline's:
   before the first intervened layer every key and value equals the unablated one.

Batching, row sharing and summation order are the evaluator's, so scores equal one
``evaluate`` per condition under ``ablate`` (float32 rounding of different batch shapes aside).
Documents truncated to the model context take :func:`~depthprobe.engine.logits.score_conditions`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from depthprobe import adapter
from depthprobe.engine.grids import Condition, unique_ids
from depthprobe.engine.logits import _chunks, _row_hook, plan_tails, score_conditions
from depthprobe.evaluation.loglikelihood import DocScores, _length_batches, _pad_right, encode_pair
from depthprobe.identity import ResolvedModel, resolved
from depthprobe.interventions import bind_all, order_hooks, validate

__all__ = ["score_conditions_reuse"]


def _keep(store: dict[int, Tensor], layer: int) -> Callable[..., None]:
    def hook(resid: Tensor, hook: Any) -> None:
        store[layer] = resid.detach()

    return hook


def _rows(cache: DynamicCache, rows: Tensor) -> DynamicCache:
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in out.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys.index_select(0, rows)
            layer.values = layer.values.index_select(0, rows)
    return out


def _fill(cache: DynamicCache, base: DynamicCache, repeat: int) -> DynamicCache:
    """``cache`` with every layer it did not compute taken from ``base`` (rows tiled ``repeat`` times)."""
    for idx, layer in enumerate(base.layers):
        while len(cache.layers) <= idx:
            cache.layers.append(type(layer)())
        mine = cache.layers[idx]
        if getattr(mine, "keys", None) is None or not getattr(mine, "is_initialized", True) or not mine.keys.numel():
            filled = copy.copy(layer)
            filled.keys = layer.keys.repeat(repeat, 1, 1, 1)
            filled.values = layer.values.repeat(repeat, 1, 1, 1)
            cache.layers[idx] = filled
    return cache


def score_conditions_reuse(
    model: torch.nn.Module | ResolvedModel,
    requests: Sequence[tuple[str, Sequence[str]]],
    conditions: Sequence[Condition],
    *,
    batch_size: int = 16,
    max_rows: int | None = None,
) -> dict[str, list[Any]]:
    """Multiple-choice log-likelihoods of every request under every condition: ``{condition id: [DocScores]}``.

    Same contract as :func:`~depthprobe.engine.logits.score_conditions` (lm-eval's tokenization and
    scores), computed as the evaluator computes them (each context once, its choices on its KV
    cache) and reusing the unablated prefix across conditions. ``max_rows`` bounds the rows of
    one forward (conditions x documents).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = unique_ids(conditions)
    resolved_model = resolved(model)
    model, dims = resolved_model.model, resolved_model.dims
    for cond in conditions:
        validate(dims, list(cond))
    tokenizer = model.tokenizer
    max_len = adapter.max_context_length(model, tokenizer)
    device = next(model.parameters()).device
    encoded: list[tuple[list[int], list[list[int]]]] = []
    for i, (context, continuations) in enumerate(requests):
        ctx: list[int] = []
        conts = []
        for cont in continuations:
            ctx, c = encode_pair(tokenizer, context, cont)
            if not c:
                raise ValueError(f"request {i}: continuation {cont!r} tokenizes to zero tokens")
            conts.append(c)
        encoded.append((ctx, conts))
    truncated = [any(len(ctx) + len(c) > max_len + 1 for c in conts) for ctx, conts in encoded]
    lls = {cid: [[0.0] * len(c) for _, c in encoded] for cid in ids}
    greedy = {cid: [[True] * len(c) for _, c in encoded] for cid in ids}

    bound = [bind_all(model, list(c)) for c in conditions]  # before any hook is installed
    plan = plan_tails(conditions, dims.n_layers)
    starts = sorted({start for start, _ in plan})
    baseline = [i for i, c in enumerate(conditions) if not len(c)]
    ckw = adapter.cache_kwargs(model, None)
    cache_name = next(iter(ckw))

    def forward(tokens: Tensor, cache: DynamicCache, hooks: list, **kw: Any) -> Tensor:
        with model.hooks(fwd_hooks=hooks):
            return model(tokens, return_type="logits", use_cache=True, **{cache_name: cache}, **kw)

    with torch.no_grad():
        shared = sorted((i for i in range(len(encoded)) if not truncated[i]), key=lambda i: -len(encoded[i][0]))
        for docs in _length_batches(shared, [len(encoded[i][0]) for i in shared], batch_size):
            B = len(docs)
            ctxs = [encoded[i][0] for i in docs]
            lengths = torch.tensor([len(c) for c in ctxs], device=device)
            tokens = _pad_right(ctxs, device)
            width = tokens.shape[1]
            ctx_mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
            multi = [(b, j) for b, i in enumerate(docs) for j, c in enumerate(encoded[i][1]) if len(c) > 1]
            multi.sort(key=lambda bj: -len(encoded[docs[bj[0]]][1][bj[1]]))
            unique: dict[tuple[int, tuple[int, ...]], int] = {}
            for b, j in multi:
                unique.setdefault((b, tuple(encoded[docs[b]][1][j][:-1])), len(unique))
            keys = list(unique)
            cont_chunks = _length_batches(keys, [len(inp) for _, inp in keys], batch_size) if keys else []

            # 1. the baseline: contexts, then choices on their cache; residuals kept where tails start
            ctx_resid: dict[int, Tensor] = {}
            base_cache = DynamicCache()
            base_logits = forward(
                tokens, base_cache, [(f"blocks.{s}.hook_resid_pre", _keep(ctx_resid, s)) for s in starts]
            )
            chunk_inputs = []
            base_cont_logits = []
            for chunk in cont_chunks:
                rows = torch.tensor([b for b, _ in chunk], dtype=torch.long, device=device)
                cont_tokens = _pad_right([list(inp) for _, inp in chunk], device)
                n_new = cont_tokens.shape[1]
                mask = torch.cat([ctx_mask[rows], torch.ones((len(chunk), n_new), dtype=torch.long, device=device)], 1)
                positions = lengths[rows][:, None] + torch.arange(n_new, device=device)[None, :]
                resid: dict[int, Tensor] = {}
                out = forward(
                    cont_tokens,
                    _rows(base_cache, rows),
                    [(f"blocks.{s}.hook_resid_pre", _keep(resid, s)) for s in starts],
                    attention_mask=mask,
                    position_ids=positions,
                )
                chunk_inputs.append((rows, cont_tokens, mask, positions, resid))
                base_cont_logits.append(out)

            def score(cid: str, last_lp: Tensor, cont_logprobs: list[Tensor]) -> None:
                first: dict[tuple[int, int], Tensor] = {}
                for b, i in enumerate(docs):
                    conts = encoded[i][1]
                    idx = torch.tensor([c[0] for c in conts], dtype=torch.long, device=device)
                    picked = last_lp[b].gather(0, idx)
                    top = int(last_lp[b].argmax())
                    for j in range(len(conts)):
                        lls[cid][i][j] = picked[j].item()
                        greedy[cid][i][j] = top == conts[j][0]
                        first[(b, j)] = picked[j : j + 1]
                start = 0
                for chunk, logprobs in zip(cont_chunks, cont_logprobs):
                    for b, j in multi:
                        i, cont = docs[b], encoded[docs[b]][1][j]
                        r = unique[(b, tuple(cont[:-1]))] - start
                        if not 0 <= r < len(chunk):
                            continue
                        target = torch.tensor(cont[1:], dtype=torch.long, device=device)
                        lp = logprobs[r, : len(cont) - 1]
                        picked = lp.gather(1, target[:, None])[:, 0]
                        lls[cid][i][j] = torch.cat([first[(b, j)], picked]).sum().item()
                        greedy[cid][i][j] = greedy[cid][i][j] and bool((lp.argmax(-1) == target).all())
                    start += len(chunk)

            if baseline:
                last = base_logits[torch.arange(B, device=device), lengths - 1]
                score(
                    ids[baseline[0]],
                    torch.log_softmax(last, dim=-1),
                    [torch.log_softmax(o, dim=-1) for o in base_cont_logits],
                )
            del base_logits, base_cont_logits

            # 2-3. every condition: its tail on the contexts, then on the choices over its own cache
            per_forward = len(conditions) if max_rows is None else max(1, max_rows // B)
            for (start_layer, tail), members in plan.items():
                for group in _chunks(conditions, members, per_forward):
                    k = len(group)
                    hooks = [("hook_embed", lambda x, hook, r=ctx_resid[start_layer].repeat(k, 1, 1): r)]
                    for g, i in enumerate(group):
                        hooks += [(n, _row_hook(fn, slice(g * B, (g + 1) * B))) for n, fn in order_hooks(bound[i])]
                    cache = DynamicCache()
                    with adapter.tail_only(model, tail):
                        logits = forward(tokens.repeat(k, 1), cache, hooks)
                    last = logits[torch.arange(k * B, device=device), lengths.repeat(k) - 1]
                    last_lp = torch.log_softmax(last, dim=-1)
                    del logits
                    cache = _fill(cache, base_cache, k)
                    cont_lps: list[list[Tensor]] = [[] for _ in group]
                    for rows, cont_tokens, mask, positions, resid in chunk_inputs:
                        n = len(rows)
                        all_rows = torch.cat([rows + g * B for g in range(k)])
                        hooks = [("hook_embed", lambda x, hook, r=resid[start_layer].repeat(k, 1, 1): r)]
                        for g, i in enumerate(group):
                            hooks += [
                                (nm, _row_hook(fn, slice(g * n, (g + 1) * n))) for nm, fn in order_hooks(bound[i])
                            ]
                        with adapter.tail_only(model, tail):
                            out = forward(
                                cont_tokens.repeat(k, 1),
                                _rows(cache, all_rows),
                                hooks,
                                attention_mask=mask.repeat(k, 1),
                                position_ids=positions.repeat(k, 1),
                            )
                        lp = torch.log_softmax(out, dim=-1)
                        for g in range(k):
                            cont_lps[g].append(lp[g * n : (g + 1) * n])
                    for g, i in enumerate(group):
                        score(ids[i], last_lp[g * B : (g + 1) * B], cont_lps[g])

        cut = [i for i in range(len(encoded)) if truncated[i]]
        if cut:  # lm-eval's own window per request, through the window engine
            sub = score_conditions(
                model, [requests[i] for i in cut], conditions, batch_size=batch_size, max_rows=max_rows
            )
            for cid in ids:
                for n, i in enumerate(cut):
                    lls[cid][i] = list(sub[cid][n].loglikelihoods)
                    greedy[cid][i] = list(sub[cid][n].is_greedy)
    return {
        cid: [
            DocScores(tuple(lls[cid][i]), tuple(greedy[cid][i]), tuple(len(c) for c in encoded[i][1]), truncated[i])
            for i in range(len(encoded))
        ]
        for cid in ids
    }
