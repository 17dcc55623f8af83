"""Log-likelihood of continuations, tokenized exactly as lm-eval 0.4.13 and scored in batches.

Tokenization (lm-eval ``TemplateLM._encode_pair``): trailing whitespace of the context moves
to the continuation; the continuation tokens are the tail of ``tok(context + continuation)``
after ``len(tok(context))`` tokens. A pair longer than ``max_length + 1`` tokens is truncated
from the left, as lm-eval does, and counted.

Scoring shares work lm-eval repeats. All choices of a document share the context tokens, so
the context is run once (right-padded batches of contexts, no mask needed under causal
attention); its last logits score every choice's first token, so single-token choices (MMLU
letters) cost one forward per document. The remaining tokens of multi-token choices are run
on top of the context's KV cache (``DynamicCache`` rows selected per choice), with an
attention mask that hides the context padding and explicit positions; choices whose tokens
after the first coincide share a row. Batches hold at most ``batch_size`` rows and are cut
where padding would more than double a row. Documents with a left-truncated request take
lm-eval's own path (one window per distinct request). Everything goes through the model's
own forward, so active hooks (interventions) apply to the cache as well.

Agreement with lm-eval in float32: identical tokens, prompts and greedy flags; summed
log-likelihoods within ~1e-5 (a few float32 ulps of the sum), since the cached pass rounds
differently from one full forward.
"""

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depthprobe import adapter
from depthprobe.evaluation.tokenize import encode_pair, prefix_token_id, tok_encode

__all__ = ["DocScores", "ScoreStats", "encode_pair", "model_max_length", "score_choices", "score_encoded"]

DEFAULT_MAX_LENGTH = adapter.DEFAULT_MAX_LENGTH
TOKENIZER_INFINITY = adapter.TOKENIZER_INFINITY


@dataclass(frozen=True)
class DocScores:
    """Per-choice results for one document."""

    loglikelihoods: tuple[float, ...]
    is_greedy: tuple[bool, ...]
    n_tokens: tuple[int, ...]
    truncated: bool


@dataclass
class ScoreStats:
    """Work done: requests scored, forward calls, token positions computed (padding included),
    requests left-truncated to the model context."""

    n_requests: int = 0
    n_forwards: int = 0
    n_token_forwards: int = 0
    n_truncated: int = 0


def model_max_length(model: Any, tokenizer: Any = None) -> int:
    """The context length lm-eval's HFLM would use for this model (config, then tokenizer, then 2048)."""
    return adapter.max_context_length(model, tokenizer)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _forward(model: Any, tokens: Tensor, stats: ScoreStats, **kwargs: Any) -> Any:
    stats.n_forwards += 1
    stats.n_token_forwards += tokens.numel()
    return model(tokens, **kwargs)


def _pad_right(rows: Sequence[Sequence[int]], device: torch.device) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.zeros((len(rows), width), dtype=torch.long, device=device)  # pad id 0, as lm-eval
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long, device=device)
    return out


def _token_scores(logprobs: Tensor, targets: Sequence[int]) -> tuple[Tensor, list[bool]]:
    idx = torch.tensor(targets, dtype=torch.long, device=logprobs.device)
    picked = logprobs.gather(1, idx[:, None])[:, 0]
    greedy = (logprobs.argmax(dim=-1) == idx).tolist()
    return picked, greedy


def _length_batches(items: list, lengths: list[int], batch_size: int) -> list[list]:
    """Split items (sorted by decreasing length) into batches of at most ``batch_size`` rows, also
    cutting where a row would be less than half the batch's longest, so padding stays below 2x."""
    batches: list[list] = []
    longest = 0
    for item, n in zip(items, lengths):
        if not batches or len(batches[-1]) == batch_size or 2 * n < longest:
            batches.append([])
            longest = n
        batches[-1].append(item)
    return batches


def _select_cache(cache: Any, rows: Tensor) -> Any:
    """A new cache holding the given batch rows of ``cache`` (the original stays untouched)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in out.layers:
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
    return out


def score_choices(
    model: Any,
    requests: Sequence[tuple[str, Sequence[str]]],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    tokenizer: Any = None,
) -> tuple[list[DocScores], ScoreStats]:
    """Summed log-probability and greedy flag of every continuation of every (context, continuations).

    ``requests[i] = (context, [continuation, ...])``; continuations include their delimiter
    (e.g. ``" B"``). Results come back in input order. ``batch_size`` bounds the rows of
    each forward.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    max_len = max_length if max_length is not None else model_max_length(model, tokenizer)
    encoded: list[tuple[list[int], list[list[int]]]] = []
    for i, (context, continuations) in enumerate(requests):
        ctx: list[int] | None = None
        conts = []
        for cont in continuations:
            c_ctx, c_cont = encode_pair(tokenizer, context, cont)
            if not c_cont:
                raise ValueError(f"request {i}: continuation {cont!r} tokenizes to zero tokens")
            if len(c_cont) > max_len:
                raise ValueError(
                    f"request {i}: continuation of {len(c_cont)} tokens exceeds the model context {max_len}"
                )
            ctx = c_ctx
            conts.append(c_cont)
        assert ctx is not None
        encoded.append((ctx, conts))
    return score_encoded(model, encoded, batch_size=batch_size, max_length=max_len)


def score_encoded(
    model: Any,
    encoded: Sequence[tuple[list[int], list[list[int]]]],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
) -> tuple[list[DocScores], ScoreStats]:
    """``score_choices`` on requests already tokenized: ``encoded[i] = (context ids, [continuation ids, ...])``.

    For callers that build token windows themselves (lm-eval's rolling log-likelihood windows).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_len = max_length if max_length is not None else model_max_length(model, model.tokenizer)
    device = _device(model)
    stats = ScoreStats(n_requests=sum(len(conts) for _, conts in encoded))
    encoded = [(list(ctx), [list(c) for c in conts]) for ctx, conts in encoded]
    for i, (ctx, conts) in enumerate(encoded):
        if not ctx or any(not c for c in conts):
            raise ValueError(f"request {i}: context and every continuation need at least one token")
    lls: list[list[float]] = [[0.0] * len(c) for _, c in encoded]
    greedy: list[list[bool]] = [[True] * len(c) for _, c in encoded]
    truncated = [any(len(ctx) + len(c) > max_len + 1 for c in conts) for ctx, conts in encoded]
    stats.n_truncated = sum(sum(len(ctx) + len(c) > max_len + 1 for c in conts) for ctx, conts in encoded)

    with torch.no_grad():
        shared = sorted((i for i in range(len(encoded)) if not truncated[i]), key=lambda i: -len(encoded[i][0]))
        for docs in _length_batches(shared, [len(encoded[i][0]) for i in shared], batch_size):
            _score_shared(model, encoded, docs, batch_size, device, lls, greedy, stats)
        full = [(i, j) for i in range(len(encoded)) if truncated[i] for j in range(len(encoded[i][1]))]
        if full:
            full.sort(key=lambda ij: -(len(encoded[ij[0]][0]) + len(encoded[ij[0]][1][ij[1]])))
            _score_full(model, encoded, full, max_len, batch_size, device, lls, greedy, stats)

    results = [
        DocScores(tuple(lls[i]), tuple(greedy[i]), tuple(len(c) for c in encoded[i][1]), truncated[i])
        for i in range(len(encoded))
    ]
    return results, stats


def _score_shared(model, encoded, docs, batch_size, device, lls, greedy, stats) -> None:
    """Score the documents ``docs`` (no truncation) with one context pass plus cached choice passes."""
    ctxs = [encoded[i][0] for i in docs]
    lengths = torch.tensor([len(c) for c in ctxs], device=device)
    tokens = _pad_right(ctxs, device)
    multi = [(b, j) for b, i in enumerate(docs) for j, c in enumerate(encoded[i][1]) if len(c) > 1]
    multi.sort(key=lambda bj: -len(encoded[docs[bj[0]]][1][bj[1]]))  # similar lengths share a batch: less padding
    if multi:
        logits, cache = _forward(model, tokens, stats, return_type="logits_and_cache")
    else:
        logits, cache = _forward(model, tokens, stats, return_type="logits"), None
    last = logits[torch.arange(len(docs), device=device), lengths - 1]
    last_lp = torch.log_softmax(last, dim=-1)
    first: dict[tuple[int, int], Tensor] = {}
    for b, i in enumerate(docs):
        conts = encoded[i][1]
        picked, g = _token_scores(last_lp[b].expand(len(conts), -1), [c[0] for c in conts])
        for j in range(len(conts)):
            lls[i][j] = picked[j].item()
            greedy[i][j] = g[j]
            first[(b, j)] = picked[j : j + 1]
    if not multi:
        return
    # choices whose inputs after the context coincide (e.g. "▁A", "▁B" sharing "▁") share one row, as in lm-eval
    unique: dict[tuple[int, tuple[int, ...]], int] = {}
    for b, j in multi:
        unique.setdefault((b, tuple(encoded[docs[b]][1][j][:-1])), len(unique))
    keys = list(unique)
    width = tokens.shape[1]
    ctx_mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    start = 0
    for chunk in _length_batches(keys, [len(inp) for _, inp in keys], batch_size):
        rows = torch.tensor([b for b, _ in chunk], dtype=torch.long, device=device)
        cont_tokens = _pad_right([list(inp) for _, inp in chunk], device)
        n_new = cont_tokens.shape[1]
        mask = torch.cat([ctx_mask[rows], torch.ones((len(chunk), n_new), dtype=torch.long, device=device)], dim=1)
        positions = lengths[rows][:, None] + torch.arange(n_new, device=device)[None, :]
        out = _forward(
            model,
            cont_tokens,
            stats,
            return_type="logits",
            past_key_values=_select_cache(cache, rows),
            attention_mask=mask,
            position_ids=positions,
        )
        logprobs = torch.log_softmax(out, dim=-1)
        for b, j in multi:
            i, cont = docs[b], encoded[docs[b]][1][j]
            r = unique[(b, tuple(cont[:-1]))] - start
            if not 0 <= r < len(chunk):
                continue
            picked, g = _token_scores(logprobs[r, : len(cont) - 1], cont[1:])
            # one sum over all continuation tokens, in lm-eval's order, so rounding matches too
            lls[i][j] = torch.cat([first[(b, j)], picked]).sum().item()
            greedy[i][j] = greedy[i][j] and all(g)
        start += len(chunk)


def _score_full(model, encoded, pairs, max_len, batch_size, device, lls, greedy, stats) -> None:
    """lm-eval's own path for truncated requests: one window ``(ctx+cont)[-(max_len+1):][:-1]`` per request.

    Requests with identical windows (single-token choices of one document) share a row, as in lm-eval.
    """
    rows: dict[tuple[int, ...], int] = {}
    where = []
    for i, j in pairs:
        ctx, cont = encoded[i][0], encoded[i][1][j]
        window = tuple((ctx + cont)[-(max_len + 1) :][:-1])
        where.append((rows.setdefault(window, len(rows)), window, cont))
    windows = list(rows)
    for start in range(0, len(windows), batch_size):
        logits = _forward(model, _pad_right(windows[start : start + batch_size], device), stats, return_type="logits")
        logprobs = torch.log_softmax(logits, dim=-1)
        for (i, j), (r, window, cont) in zip(pairs, where):
            if start <= r < start + batch_size:
                n = len(window)
                picked, g = _token_scores(logprobs[r - start, n - len(cont) : n], cont)
                lls[i][j] = picked.sum().item()
                greedy[i][j] = all(g)


_prefix_token_id = prefix_token_id
_tok_encode = tok_encode
