"""Generation under many conditions that decodes only where a condition departs from the baseline.

Greedy decoding under a condition repeats the baseline's tokens for as long as the condition's
greedy choice at each position is the baseline's token there, and that can be checked for many
positions at once. Per decode batch of documents (the batches of ``generate_until``):

1. **Baseline pass.** The baseline's generated tokens (decoded once, beforehand) are run
   teacher-forced and unablated over prompt + generation, through the layers below the last
   layer where some condition starts, recording the residual stream entering each such layer
   and the KV cache of the layers below.
2. **Verification.** Each condition runs only its tail, from its first edited layer, on that
   residual stream, many positions per forward (conditions as row blocks: exact weight edits
   row-wise on the plain model, :class:`~depthprobe.interventions.weights.RowEdits`, or the
   bridge with row-block hooks), and takes its greedy token at every generated position. The
   first forward covers the prompt and the first :data:`~depthprobe.engine.verify_passes.FIRST_CHUNK` generated positions, each
   later one twice as many as the one before, on the tail's KV cache; a row leaves as soon as
   its token differs from the baseline's (its ``diverge_at``) or its baseline generation ends
   (it agrees to the end: finished, its generation is the baseline's).
3. **Decoding from the divergence** (:mod:`depthprobe.engine.divergence`). Every other row takes
   the condition's own token at its first differing position and is decoded greedily from
   there, on the KV cache of its verified prefix (the baseline's layers below the tail, the
   verification's from it), rows of several decode batches together (up to ``max_rows``).
   With ``lookup``, each step also checks tokens proposed by matching the row's last tokens in
   the baseline's generation and the prompt (prompt-lookup drafting); only those equal to the
   greedy choice are kept.

A group whose first decode batch shows that verification would save little (:data:`MIN_SHARE`)
decodes its other batches token by token instead, with the same result.

Every token is the condition's own greedy choice, so this is exact greedy decoding: it equals
``generate_until`` under the condition up to the float32 rounding of other batch shapes (as the
batched decoders do; tested with the margin policy of ``tests/tolerance.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import DynamicCache

from depthprobe.engine.divergence import Lookup, Pending, VerifyStats, diverge_at, nearest, prefix_rows, with_divergence
from depthprobe.engine.verify_passes import FIRST_CHUNK, VERIFY_TOKENS, Group, make_batch
from depthprobe.evaluation.decode import Rows
from depthprobe.evaluation.fast_decode import HookFreeDecoder
from depthprobe.evaluation.generation import Generation, GenerationPlan

__all__ = ["MIN_SHARE", "VerifyStats", "diverge_at", "verify_group", "with_divergence"]

#: the share of ``draft=None``'s row steps that verification must be expected to save, judged on a group's first
#: decode batch, for its other batches to be verified too (else they are decoded token by token, as
#: ``draft=None``): the baseline's tokens the conditions keep, plus the steps a whole batch spends on rows that
#: have ended (the baseline's lengths standing in for the conditions'), which continuous batching does not
#: spend. Below it, verification and the wider caches of resumed rows cost more than they save (stories260K's
#: heads keep 20% and every story runs its 96 tokens: 0.77x of ``draft=None`` on this CPU, verified throughout)
MIN_SHARE = 0.3
#: rows verified ahead of the decoding, in units of its capacity (``max_rows``), so that rows of similar lengths can
#: be decoded together: the caches of up to (1 + LOOKAHEAD) x max_rows rows are held at once
LOOKAHEAD = 1


def verify_group(
    model: Any,
    plan: GenerationPlan,
    decoder: Any,
    baseline: Sequence[Sequence[int]],
    *,
    hook_free: bool,
    attn_implementation: str | None = None,
    lookup: int = 0,
    max_rows: int | None = None,
    stats: VerifyStats | None = None,
    min_share: float = MIN_SHARE,
) -> list[list[Generation]]:
    """Every request under each of ``decoder``'s conditions (its row blocks): ``[condition][request]``.

    ``decoder`` is the group's :class:`~depthprobe.evaluation.fast_decode.BlockDecoder` (``hook_free``)
    or :class:`~depthprobe.engine.generation.HookedBlockDecoder`; ``baseline[i]`` is request ``i``'s
    generated ids under no intervention (as ``plan`` decodes them). Rows that diverge are decoded on
    together, up to ``max_rows`` at a time (None: all at once): as rows end, the next decode batches
    are verified and their diverging rows take the freed places (continuous batching).
    ``lookup`` > 0 checks that many prompt-lookup drafted tokens per row and step after a divergence.
    When the first decode batch suggests that verification saves less than ``min_share`` of the row
    steps, the others are decoded token by token (:data:`MIN_SHARE`); the generations are the same either way.
    """
    stats = stats if stats is not None else VerifyStats()
    group = Group(model, decoder, hook_free, attn_implementation)
    k, req, device = len(decoder.conditions), plan.requests, plan.device
    prefix = cond_prefix = None
    if req.prefix_ids is not None:
        prefix = HookFreeDecoder((), attn_implementation=attn_implementation if hook_free else None).prefix_cache(
            model, req.prefix_ids, device
        )
        cond_prefix = decoder.prefix_cache(model, req.prefix_ids, device)
    results: list[list[Generation | None]] = [[None] * len(req.tokens) for _ in range(k)]
    waiting: list[Pending] = []  # verified rows not yet handed to the decoder
    # the first decode batch says whether verifying the others pays
    before = stats.tokens_verified
    chunk = _verify_job(group, plan, baseline, req.jobs[0], prefix, cond_prefix, results, stats)
    waiting += [chunk] if chunk is not None else []
    lengths = [len(baseline[i]) for i in req.jobs[0][0]]
    kept = (stats.tokens_verified - before) / max(1, k * sum(lengths))
    idle = 1 - sum(lengths) / max(1, len(lengths) * max(lengths))
    plain = list(req.jobs[1:]) if kept + idle < min_share else []
    stats.jobs_plain += len(plain)
    jobs = iter([] if plain else req.jobs[1:])
    handed: list[tuple[int, int, bool, int]] = []  # (block, request, prefix reused, tokens so far), as handed over
    drafts = Lookup([], lookup)
    capacity = max_rows if max_rows is not None else k * max(1, len(req.tokens))

    def rows(n: int, width: int) -> Rows | None:
        # verify ahead (up to `capacity` rows waiting beyond those asked for), then hand over the narrowest rows
        while sum(len(c.rows) for c in waiting) < n + LOOKAHEAD * capacity:
            job = next(jobs, None)
            if job is None:
                break
            chunk = _verify_job(group, plan, baseline, job, prefix, cond_prefix, results, stats)
            if chunk is not None:
                waiting.append(chunk)
        if not waiting:
            return None
        batch, rest = nearest(waiting, n, width)
        waiting[:] = rest
        handed.extend((j, i, u, len(p)) for (j, i), u, p in zip(batch.rows, batch.reused, batch.prior))
        drafts.add(batch.sources)
        return Rows(batch.prior, [j for j, _ in batch.rows], batch.cache, batch.mask)

    decoded = decoder.resume(
        model,
        rows,
        capacity=capacity,
        max_new_tokens=plan.max_gen_toks,
        policy=plan.policy,
        draft=drafts if lookup else None,
        draft_tokens=lookup,
    )
    stats.rows_decoded += len(handed)
    stats.row_steps += decoded.row_steps
    stats.forwards["decode"] += decoded.forwards
    stats.drafted_accepted += decoded.accepted
    for (j, i, reused, so_far), tokens, hit in zip(handed, decoded.tokens, decoded.hit_stop, strict=True):
        stats.tokens_decoded += len(tokens) - so_far + 1  # from the first differing token on
        results[j][i] = plan.generation(i, tokens, hit, reused)
    if plain:
        plan.decode_jobs(model, decoder, plain, results, cond_prefix)
    return results  # type: ignore[return-value]


def _verify_job(
    group: Group,
    plan: GenerationPlan,
    baseline: Sequence[Sequence[int]],
    job: tuple[list[int], bool],
    prefix: DynamicCache | None,
    cond_prefix: DynamicCache | None,
    results: list[list[Generation | None]],
    stats: VerifyStats,
) -> Pending | None:
    """Verify one decode batch under every condition of the group: finished rows go to ``results``, the rows that
    decode on from their divergence come back with the caches of their verified prefixes."""
    docs, use_prefix = job
    pre = prefix if use_prefix else None
    batch = make_batch(plan, docs, use_prefix, baseline, pre.get_seq_length() if pre is not None else 0)
    starts = sorted({f for f in group.firsts if f < group.n_layers})
    verdicts: dict[tuple[int, int], tuple[int, int, Any]] = {}
    base = DynamicCache()
    if starts:
        entering, base = group.base_pass(batch, pre, starts, through=any(group.shares_kv))
        stats.forwards["baseline"] += 1
        for start in starts:
            for light in (True, False):
                members = [j for j, f in enumerate(group.firsts) if f == start and group.shares_kv[j] == light]
                per_pass = max(
                    1, VERIFY_TOKENS // max(1, len(docs) * (FIRST_CHUNK + (0 if light else batch.prompt_width)))
                )
                for at in range(0, len(members), per_pass):
                    verdicts.update(
                        group.verify(
                            batch,
                            members[at : at + per_pass],
                            start,
                            entering.get(start),
                            base,
                            cond_prefix if use_prefix else None,
                            stats,
                        )
                    )
    rows, prior, sources, lengths = [], [], [], []
    for j in range(len(group.firsts)):
        for r, i in enumerate(docs):
            gen = batch.baseline[r]
            d, token, tail = verdicts.get((j, r), (len(gen), -1, None))
            stats.rows += 1
            stats.tokens_verified += d
            if d == len(gen):  # agrees to the end: the baseline's generation, stop and all
                results[j][i] = plan.generation(i, gen, plan.policy.is_done(gen), use_prefix)
                stats.finished_by_verify += 1
                continue
            tokens = gen[:d] + [token]
            if plan.policy.is_done(tokens) or len(tokens) >= plan.max_gen_toks:
                results[j][i] = plan.generation(i, tokens, plan.policy.is_done(tokens), use_prefix)
                continue
            pairs, row = tail
            below = [
                (base.layers[layer].keys[r : r + 1], base.layers[layer].values[r : r + 1])
                for layer in range(group.firsts[j])
            ]
            rows.append((j, r))
            prior.append(tokens)
            sources.append(below + [(kk[row : row + 1], vv[row : row + 1]) for kk, vv in pairs])
            lengths.append(batch.prefix_len + batch.prompt_width + d)
    if not rows:
        return None
    cache, mask = prefix_rows(sources, lengths, [batch.mask[r] for _, r in rows])
    return Pending(
        [(j, docs[r]) for j, r in rows],
        prior,
        [use_prefix] * len(rows),
        cache,
        mask,
        [(batch.baseline[r], batch.prompts[r]) for _, r in rows],
    )
