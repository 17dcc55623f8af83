"""The forwards of verification (:mod:`depthprobe.engine.verify`): the baseline pass and the conditions' tail passes.

A :class:`Batch` is one decode batch with the baseline's generation appended (teacher-forced). A
:class:`Group` runs, for the conditions of one row-block group, the unablated **baseline pass**
(the residual stream entering every layer where a condition starts, and the KV cache of the layers
below) and each condition's **tail passes** (from its first edited layer, many positions per
forward on the tail's KV cache, rows leaving as soon as they depart from the baseline), either
hook-free (exact weight edits applied row-wise, :class:`~depthprobe.interventions.weights.RowEdits`)
or through the bridge with row-block hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache

from depthprobe import adapter
from depthprobe.engine.divergence import VerifyStats, diverge_at
from depthprobe.engine.logits import _row_hook
from depthprobe.evaluation.generation import GenerationPlan
from depthprobe.evaluation.tokenize import left_pad
from depthprobe.interventions import order_hooks
from depthprobe.interventions.weights import kept_layers, plain_model
from depthprobe.models import model_dims

__all__ = ["FIRST_CHUNK", "MAX_CHUNK", "VERIFY_TOKENS", "Batch", "Group", "make_batch"]

#: rows x positions of the first verification forward of a group of conditions (bounds its activations)
VERIFY_TOKENS = 16384
#: logits (rows x positions x vocabulary) computed at once when picking greedy tokens
LOGIT_ELEMENTS = 1 << 27
#: generated positions the first verification forward checks; each later forward checks twice as many, up to MAX_CHUNK
FIRST_CHUNK, MAX_CHUNK = 8, 64
#: hook points of a layer downstream of its keys and values (an intervention there leaves them unchanged)
_OUTPUT_HOOKS = (
    "attn.hook_z",
    "attn.o.",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.",
    "mlp.",
    "hook_mlp_out",
    "hook_resid_post",
)


@dataclass
class Batch:
    """One decode batch: prompt + the baseline's generation (teacher-forced), its mask and positions."""

    docs: list[int]
    ids: Tensor  # [B, P + T - 1]: left-padded prompts, then the baseline's tokens but the last
    mask: Tensor  # [B, prefix + P + T - 1]
    positions: Tensor  # [B, P + T - 1]
    prompt_width: int  # P
    baseline: list[list[int]]
    prompts: list[list[int]]  # full prompts (prefix included), for drafting

    @property
    def prefix_len(self) -> int:
        return self.mask.shape[1] - self.ids.shape[1]


def make_batch(
    plan: GenerationPlan, docs: list[int], use_prefix: bool, baseline: Sequence[Sequence[int]], prefix_len: int
) -> Batch:
    req = plan.requests
    ids, mask = left_pad([req.reuse[i] if use_prefix else req.tokens[i] for i in docs], plan.pad)
    width = ids.shape[1]
    gens = [list(baseline[i]) for i in docs]
    n_gen = max(len(g) for g in gens)
    tail = torch.full((len(docs), n_gen - 1), plan.pad, dtype=ids.dtype)
    tail_mask = torch.zeros((len(docs), n_gen - 1), dtype=mask.dtype)
    for r, g in enumerate(gens):
        tail[r, : len(g) - 1] = torch.tensor(g[:-1], dtype=ids.dtype)
        tail_mask[r, : len(g) - 1] = 1
    ids = torch.cat([ids, tail], dim=1).to(plan.device)
    mask = torch.cat([mask.new_ones(len(docs), prefix_len), mask, tail_mask], dim=1).to(plan.device).long()
    positions = ((mask.cumsum(-1) - 1).masked_fill(mask == 0, 0))[:, prefix_len:]
    return Batch(docs, ids, mask, positions, width, gens, [req.tokens[i] for i in docs])


def _layer(keys: Tensor, values: Tensor) -> Any:
    return DynamicCache([(keys, values)]).layers[0]


def _rows_of(cache: DynamicCache, layers: range, rows: Tensor) -> DynamicCache:
    """A new cache of ``layers`` of ``cache`` (renumbered from 0), rows ``rows``."""
    return DynamicCache([(cache.layers[i].keys[rows], cache.layers[i].values[rows]) for i in layers])


def _argmax_last(x: Tensor, head: Callable[[Tensor], Tensor] | None, n: int) -> Tensor:
    """Greedy tokens ``[rows, n]`` at the last ``n`` positions of hidden states (``head``: the unembedding) or logits."""
    x = x[:, x.shape[1] - n :]
    if head is None:
        return x.float().argmax(dim=-1)
    per = max(1, LOGIT_ELEMENTS // max(1, n * head.weight.shape[0]))
    return torch.cat([head(x[at : at + per]).float().argmax(dim=-1) for at in range(0, x.shape[0], per)])


class Group:
    """The conditions of one row-block group and how their tails run (hook-free, or through the bridge's hooks)."""

    def __init__(self, model: Any, decoder: Any, hook_free: bool, attn_implementation: str | None) -> None:
        self.model, self.decoder, self.hook_free = model, decoder, hook_free
        self.plain = plain_model(model, attn_implementation=attn_implementation if hook_free else None)
        self.n_layers = model_dims(model).n_layers
        if hook_free:
            edits = decoder.row_edits(model)
            self.firsts = [edits.first_layer(j) for j in range(len(decoder.conditions))]
        else:
            self.firsts = [min((iv.first_layer for iv in c), default=self.n_layers) for c in decoder.conditions]
        self.kw = next(iter(adapter.cache_kwargs(self.plain, None)))
        self.shares_kv = [self._shares_kv(j) for j in range(len(self.firsts))]

    def _shares_kv(self, j: int) -> bool:
        """Whether condition ``j`` changes only the last layer, and not its keys and values: then its KV cache is
        the baseline's at every layer and position, and its verification needs no prompt position."""
        last = self.n_layers - 1
        if self.firsts[j] != last:
            return False
        if self.hook_free:
            attn = self.plain.model.layers[last].self_attn
            return not {attn.k_proj, attn.v_proj} & set(self.decoder.row_edits(self.model).editors[j].linear_edits())
        prefix = f"blocks.{last}."
        return all(
            name.startswith(prefix) and name[len(prefix) :].startswith(_OUTPUT_HOOKS)
            for name, _ in order_hooks(self.decoder.bound[j])
        )

    def base_pass(
        self, batch: Batch, prefix: DynamicCache | None, starts: list[int], through: bool
    ) -> tuple[dict[int, Tensor], DynamicCache]:
        """The unablated residual entering every layer of ``starts``, and the KV cache of the layers below the last
        (``through``: and of the last too)."""
        top, plain, b = max(starts), self.plain, batch.ids.shape[0]
        stop = top + 1 if through else top
        rows = torch.zeros(b, dtype=torch.long, device=batch.ids.device)
        cache = _rows_of(prefix, range(stop), rows) if prefix is not None else DynamicCache()
        entering: dict[int, Tensor] = {}
        if 0 in starts:  # the input of layer 0 is the embedding (Llama and Qwen3 do not scale it)
            entering[0] = plain.model.embed_tokens(batch.ids)
        if stop == 0:
            return entering, cache

        def record(layer: int) -> Any:
            def hook(module: Any, args: tuple[Any, ...]) -> None:
                entering[layer] = args[0]

            return hook

        targets = [(plain.model.layers[s], s) for s in starts if 0 < s < stop]
        targets += [(plain.model.norm, top)] if stop == top else []
        handles = [module.register_forward_pre_hook(record(s)) for module, s in targets]
        try:
            with kept_layers(plain, list(range(stop))):
                plain.model(
                    input_ids=batch.ids,
                    attention_mask=batch.mask,
                    position_ids=batch.positions,
                    use_cache=True,
                    **{self.kw: cache},
                )
        finally:
            for handle in handles:
                handle.remove()
        return entering, cache

    def _tail(
        self,
        members: list[int],
        running: list[tuple[int, int]],
        ids: Tensor,
        mask: Tensor,
        pos: Tensor,
        hidden: Tensor | None,
        cache: DynamicCache,
        start: int,
        n: int,
    ) -> Tensor:
        """One tail forward of the running ``(block, row)`` pairs; greedy tokens ``[rows, n]`` at the last ``n`` positions."""
        device = ids.device
        blocks = [
            torch.tensor([i for i, (j, _) in enumerate(running) if j == m], dtype=torch.long, device=device)
            for m in members
        ]
        if self.hook_free:
            edits = self.decoder.row_edits(self.model)
            with edits.applied(members, start=start, start_hidden=hidden if start else None, block_rows=blocks) as p:
                h = p.model(
                    input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{self.kw: cache}
                ).last_hidden_state
                return _argmax_last(h, p.lm_head, n)
        model = self.model
        hooks: list[tuple[str, Any]] = [("hook_embed", lambda x, hook: hidden)] if start else []
        for g, j in enumerate(members):
            hooks += [
                (name, _row_hook(fn, lambda rows=blocks[g]: rows)) for name, fn in order_hooks(self.decoder.bound[j])
            ]
        with adapter.tail_only(model, list(range(start, self.n_layers))), model.hooks(fwd_hooks=hooks):
            logits = model(
                ids,
                return_type="logits",
                attention_mask=mask,
                position_ids=pos,
                logits_to_keep=n,
                **adapter.cache_kwargs(model, cache),
            )
        return _argmax_last(logits, None, n)

    def verify(
        self,
        batch: Batch,
        members: list[int],
        start: int,
        hidden: Tensor | None,
        base: DynamicCache,
        prefix: DynamicCache | None,
        stats: VerifyStats,
    ) -> dict[tuple[int, int], tuple[int, int, Any]]:
        """``{(block, row): (diverge_at, the condition's token there, its tail cache)}`` of ``members`` (all start at
        ``start``); rows that agree to the end get ``(length, -1, None)``. A tail cache is ``(pairs, row)``: for
        every layer from ``start`` on, (keys, values) holding the row at ``row``."""
        b, device, lpre = len(batch.docs), batch.ids.device, batch.prefix_len
        running = [(j, r) for j in members for r in range(b)]
        index = torch.tensor([j for j, _ in running], device=device)
        layers = range(start, self.n_layers) if self.hook_free else range(self.n_layers)
        own = start if not self.hook_free else 0  # cache index of layer `start`
        width, first = batch.ids.shape[1], batch.prompt_width - 1  # input position predicting generated token 0
        at, size = 0, FIRST_CHUNK
        if all(self.shares_kv[j] for j in members):  # the prompt's keys and values are the baseline's: skip it
            at, rows = first, torch.tensor([r for _, r in running], device=device)
            cache = DynamicCache(
                [
                    (base.layers[i].keys[rows, :, : lpre + at], base.layers[i].values[rows, :, : lpre + at])
                    for i in layers
                ]
            )
        else:
            cache = _rows_of(prefix, layers, index) if prefix is not None else DynamicCache()
        got: dict[tuple[int, int], list[int]] = {key: [] for key in running}
        out: dict[tuple[int, int], tuple[int, int, Any]] = {}
        while running:
            end = min(width, first + size if at <= first else at + size)
            rows = torch.tensor([r for _, r in running], device=device)
            if own and at:  # the bridge reads the past length from layer 0: the baseline's layers below the tail
                for layer in range(own):
                    cache.layers[layer] = _layer(
                        base.layers[layer].keys[rows, :, : lpre + at], base.layers[layer].values[rows, :, : lpre + at]
                    )
            n = end - max(at, first)
            tokens = self._tail(
                members,
                running,
                batch.ids[rows, at:end],
                batch.mask[rows, : lpre + end],
                batch.positions[rows, at:end],
                hidden[rows, at:end] if start else None,
                cache,
                start,
                n,
            ).tolist()
            stats.forwards["verify"] += 1
            stats.positions_verified += len(running) * (end - at)
            keep, dropped = [], []
            for i, key in enumerate(running):
                seen, gen = got[key], batch.baseline[key[1]]
                seen.extend(tokens[i])
                d = diverge_at(seen, gen)
                if d < min(len(seen), len(gen)):
                    out[key] = (d, seen[d], None)
                    dropped.append(i)
                elif len(seen) >= len(gen):
                    out[key] = (len(gen), -1, None)
                else:
                    keep.append(i)
            if dropped:  # their caches, up to `end`, hold their verified prefixes
                sel = torch.tensor(dropped, device=device)
                pairs = [(layer.keys[sel], layer.values[sel]) for layer in cache.layers[own:]]
                for g, i in enumerate(dropped):
                    d, token, _ = out[running[i]]
                    out[running[i]] = (d, token, (pairs, g))
            if not keep:
                break
            cache.batch_select_indices(torch.tensor(keep, device=device))
            running = [running[i] for i in keep]
            at, size = end, min(size * 2, MAX_CHUNK)
        return out
