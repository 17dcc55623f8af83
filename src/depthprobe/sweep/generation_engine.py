"""Generation sweeps with conditions batched: rows are (condition, document) pairs of one decode batch.

One ``generate_until`` per condition decodes ``batch_size`` documents per forward; here the
documents of one batch are decoded under ``k`` conditions at once (``k * batch_size`` rows), each
row block under its own condition's hooks (the engine's row-block hooks: per-row skips, heads,
groups, mean ablation, o_proj patches). The few-shot prefix's KV cache is computed once per
condition under its hooks and tiled over its rows. Request preparation, batching order and the
stop policy are ``generate_until``'s, so each condition's generations equal its own
``generate_until`` under ``ablate``, token for token (float32 rounding of a larger batch aside:
tested on the tiny models and the organisms).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from depthprobe import adapter
from depthprobe.evaluation.decode import HookedDecoder, prefix_cache
from depthprobe.evaluation.generation import Generation, max_context_length, prepare_requests
from depthprobe.evaluation.stops import StopPolicy
from depthprobe.evaluation.tokenize import left_pad
from depthprobe.interventions import ablate, bind_all, order_hooks, validate
from depthprobe.models import model_dims
from depthprobe.sweep.engine import _chunks, _row_hook
from depthprobe.sweep.grids import Condition, condition_id, unique_ids

__all__ = ["generate_conditions"]


def _tile(caches: list[DynamicCache], rows: int) -> DynamicCache:
    """One cache whose row block g is ``caches[g]`` (batch 1) repeated ``rows`` times."""
    out = copy.deepcopy(caches[0])
    for idx, layer in enumerate(out.layers):
        layer.keys = torch.cat([c.layers[idx].keys.repeat(rows, 1, 1, 1) for c in caches])
        layer.values = torch.cat([c.layers[idx].values.repeat(rows, 1, 1, 1) for c in caches])
    return out


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
    max_rows: int | None = None,
) -> dict[str, list[Generation]]:
    """``{condition id: [Generation]}``: every prompt under every condition, conditions batched as row blocks.

    Equal to ``with ablate(model, *c): generate_until(model, prompts, until=..., max_gen_toks=...,
    batch_size=..., prefix=...)`` for each condition ``c``. ``max_rows`` bounds the rows of one
    decode batch (conditions x documents; default: every condition of a batch at once).
    """
    if isinstance(until, str) or not all(isinstance(s, str) for s in until):
        raise ValueError(f"until must be a list of strings, got {until!r}")
    if batch_size < 1 or max_gen_toks < 1:
        raise ValueError(f"batch_size and max_gen_toks must be >= 1, got {batch_size} and {max_gen_toks}")
    ids = unique_ids(conditions)
    dims = model_dims(model)
    for cond in conditions:
        validate(dims, list(cond))
    tokenizer = model.tokenizer
    context = max_context_length(model)
    if context - max_gen_toks <= 0:
        raise ValueError(f"max_gen_toks={max_gen_toks} must be less than the model's context length {context}")
    stops = list(until)
    eos_text = tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False) \
        if tokenizer.eos_token_id is not None else None
    if eos_text is not None and eos_text not in stops:
        stops.append(eos_text)
    policy = StopPolicy(frozenset(adapter.eos_token_ids(model)), tuple(stops), None, tokenizer)
    pad = adapter.pad_token_id(tokenizer)
    device = model.cfg.device
    req = prepare_requests(tokenizer, prompts, max_ctx=context - max_gen_toks, batch_size=batch_size, prefix=prefix)
    caches: list[DynamicCache | None] = [None] * len(conditions)
    if req.prefix_ids is not None:
        for i, cond in enumerate(conditions):
            with ablate(model, *cond):
                caches[i] = prefix_cache(model, req.prefix_ids, device)
    bound = [bind_all(model, list(c)) for c in conditions]
    results: dict[str, list[Generation | None]] = {cid: [None] * len(prompts) for cid in ids}
    decode = HookedDecoder()
    for batch, use_prefix in req.jobs:
        B = len(batch)
        rows = [req.reuse[i] for i in batch] if use_prefix else [req.tokens[i] for i in batch]
        tokens, mask = left_pad(rows, pad)
        per_forward = len(conditions) if max_rows is None else max(1, max_rows // B)
        for group in _chunks(conditions, list(range(len(conditions))), per_forward):
            k = len(group)
            hooks = []
            for g, i in enumerate(group):
                hooks += [(n, _row_hook(fn, slice(g * B, (g + 1) * B))) for n, fn in order_hooks(bound[i])]
            cache = _tile([caches[i] for i in group], B) if use_prefix else None  # type: ignore[misc]
            with model.hooks(fwd_hooks=hooks):
                decoded = decode(model, tokens.repeat(k, 1).to(device), mask.repeat(k, 1).to(device),
                                 max_new_tokens=max_gen_toks, policy=policy, past_key_values=cache)
            for g, i in enumerate(group):
                for row, r in enumerate(batch):
                    toks = decoded.tokens[g * B + row]
                    results[ids[i]][r] = Generation(policy.text(toks), len(toks), decoded.hit_stop[g * B + row],
                                                    req.truncated[r], use_prefix)
    return results  # type: ignore[return-value]
