"""Attribution estimates: every head's (and layer's) zero-ablation effect estimated from gradients.
(the method is described in :mod:`depthprobe.attribution`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from depthprobe.attribution.requests import Rows, batches, check_method, doc_metric, layout, metric_requests
from depthprobe.engine.grids import Condition, condition_id, parse_grid
from depthprobe.identity import ResolvedModel, resolved
from depthprobe.interventions import Intervention
from depthprobe.models import ModelDims
from depthprobe.types import HeadActs, Resid

__all__ = ["attribute"]

_KINDS = ("head", "group", "skip")

# ---------------------------------------------------------------------------------------
# Masked forward and backward.


def _mask_z(z: HeadActs, hook: HookPoint, *, mask: Float[Tensor, "batch head"]) -> HeadActs:
    """Scale each head's output ``z`` by its mask entry (ones: the unablated run)."""
    return z * mask[:, None, :, None].to(z.dtype)


def _mask_out(out: Resid, hook: HookPoint, *, mask: Float[Tensor, " batch"]) -> Resid:
    """Scale a sublayer's output (attention or MLP) by its mask entry."""
    return out * mask[:, None, None].to(out.dtype)


def _hook(fn: Callable[..., Tensor], mask: Tensor) -> Callable[..., Tensor]:
    def hook(tensor: Tensor, hook: HookPoint) -> Tensor:
        return fn(tensor, hook, mask=mask)

    return hook


@dataclass(frozen=True)
class _Paths:
    """Which masks a pass needs: layers whose heads, and layers whose skips, are attributed."""

    head_layers: tuple[int, ...]
    skip_layers: tuple[int, ...]


def _masked_pass(
    model: Any,
    tokens: Tensor,
    paths: _Paths,
    scale: dict[tuple[str, int], float],
    dims: ModelDims,
    score: Callable[[Tensor], Tensor],
) -> tuple[dict[int, Tensor], dict[int, Tensor], Tensor]:
    """One forward and backward with masks (1, or ``scale[(kind, layer)]`` on an integration path).

    Returns ``dM/dmask`` per layer, heads ``[rows, H]`` and skips ``[rows]``, and the logits;
    ``score`` maps the logits to the summed metric (documents are independent rows, so row
    gradients are per document).
    """
    batch = tokens.shape[0]
    dtype = torch.float32 if next(model.parameters()).dtype != torch.float64 else torch.float64
    head_masks = {
        l: torch.full(
            (batch, dims.n_heads), scale.get(("head", l), 1.0), dtype=dtype, device=tokens.device, requires_grad=True
        )
        for l in paths.head_layers
    }
    skip_masks = {
        l: torch.full((batch,), scale.get(("skip", l), 1.0), dtype=dtype, device=tokens.device, requires_grad=True)
        for l in paths.skip_layers
    }
    hooks = [(f"blocks.{l}.attn.hook_z", _hook(_mask_z, m)) for l, m in head_masks.items()]
    for l, m in skip_masks.items():
        hooks += [(f"blocks.{l}.hook_attn_out", _hook(_mask_out, m)), (f"blocks.{l}.hook_mlp_out", _hook(_mask_out, m))]
    leaves = list(head_masks.values()) + list(skip_masks.values())
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens, use_cache=False)
        total = score(logits)
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
    grads = [torch.zeros_like(leaf) if g is None else g.detach() for g, leaf in zip(grads, leaves)]
    n = len(head_masks)
    return dict(zip(head_masks, grads[:n])), dict(zip(skip_masks, grads[n:])), logits.detach()


def _scorer(rows: Rows, docs: list[int], row_index: dict[int, int]) -> Callable[[Tensor], Tensor]:
    def score(logits: Tensor) -> Tensor:
        total = logits.new_zeros((), dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32)
        for i in docs:
            lls = []
            for r, n, cont in rows.where[i]:
                b = row_index[r]
                lp = torch.log_softmax(logits[b, n - len(cont) : n].to(total.dtype), dim=-1)
                target = torch.tensor(cont, dtype=torch.long, device=logits.device)
                lls.append(lp.gather(1, target[:, None]).sum())
            total = total + doc_metric(lls, rows.gold[i])
        return total

    return score


def _split(conditions: Sequence[Condition], dims: ModelDims) -> tuple[list[str], list[Intervention], _Paths]:
    ids, ivs = [], []
    for cond in conditions:
        if len(cond) != 1 or cond[0].kind not in _KINDS:
            raise ValueError(
                f"cannot attribute condition {condition_id(cond)!r}; valid: single zero_head, "
                f"zero_kv_group or skip_layer conditions (grids heads:L, heads:all, groups:L, layers)"
            )
        iv = cond[0]
        if iv.layer >= dims.n_layers:
            raise ValueError(f"{iv.id}: layer {iv.layer} out of range; the model has layers 0..{dims.n_layers - 1}")
        limit = dims.n_kv_heads if iv.kind == "group" else dims.n_heads
        if iv.kind != "skip" and (iv.index is None or iv.index >= limit):
            raise ValueError(f"{iv.id}: index {iv.index} out of range; valid 0..{limit - 1}")
        ids.append(iv.id)
        ivs.append(iv)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate conditions; each condition must be unique")
    heads = tuple(sorted({iv.layer for iv in ivs if iv.kind in ("head", "group")}))
    skips = tuple(sorted({iv.layer for iv in ivs if iv.kind == "skip"}))
    return ids, ivs, _Paths(heads, skips)


def attribute(
    model: torch.nn.Module | ResolvedModel,
    task: Any,
    grid: str | Sequence[Condition],
    *,
    method: str = "atp",
    metric: str | None = None,
    steps: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    **task_options: Any,
) -> pd.DataFrame:
    """Estimated zero-ablation effect on ``metric`` of every condition of ``grid``, from gradients.

    ``grid`` is a grid spec (``heads:L``, ``heads:all``, ``groups:L``, ``layers``) or a list of
    single-intervention conditions. ``metric`` defaults to ``logit_diff`` for multiple-choice
    tasks and ``logprob`` for generation tasks. Returns one row per condition (the ids of
    ``run_sweep``) with ``kind``, ``layer``, ``index``, ``estimate`` (mean over documents of
    the estimated delta of the metric), ``estimate_abs`` (mean of its absolute value) and ``n``
    (documents). ``attrs`` hold the method, metric, baseline metric and the cost in
    forward-equivalents (a backward counted as two forwards). Good for ranking by
    ``estimate_abs``; signs and signed means are unreliable (see the module docstring).
    """
    n_steps = check_method(method, steps)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    resolved_model = resolved(model)
    model, dims = resolved_model.model, resolved_model.dims
    conditions = parse_grid(dims, grid) if isinstance(grid, str) else [list(c) for c in grid]
    conditions = [c for c in conditions if len(c)]  # the baseline has nothing to estimate
    ids, ivs, paths = _split(conditions, dims)
    metric, requests = metric_requests(
        task, metric=metric, limit=limit, num_fewshot=num_fewshot, data_dir=data_dir, **task_options
    )
    rows = layout(model, requests)
    n_docs = len(requests)
    device = next(model.parameters()).device
    head_est = {l: np.zeros((n_docs, dims.n_heads)) for l in paths.head_layers}
    skip_est = {l: np.zeros(n_docs) for l in paths.skip_layers}
    base_metric = np.zeros(n_docs)
    n_passes = n_forwards = 0
    # atp: one pass with every mask at 1; ig: per path (layer's heads, layer's skip), steps midpoints.
    if method == "atp":
        plan = [(paths, {}, 1.0)]
    else:
        plan = [
            (_Paths((l,), ()), {("head", l): (k + 0.5) / n_steps}, 1.0 / n_steps)
            for l in paths.head_layers
            for k in range(n_steps)
        ]
        plan += [
            (_Paths((), (l,)), {("skip", l): (k + 0.5) / n_steps}, 1.0 / n_steps)
            for l in paths.skip_layers
            for k in range(n_steps)
        ]
    for docs in batches(rows, batch_size):
        row_ids = sorted({r for i in docs for r, _, _ in rows.where[i]})
        row_index = {r: b for b, r in enumerate(row_ids)}
        width = max(len(rows.tokens[r]) for r in row_ids)
        tokens = torch.zeros((len(row_ids), width), dtype=torch.long, device=device)
        for b, r in enumerate(row_ids):
            tokens[b, : len(rows.tokens[r])] = torch.tensor(rows.tokens[r], dtype=torch.long, device=device)
        owner = torch.tensor([rows.doc_of_row[r] for r in row_ids], device=device)
        score = _scorer(rows, docs, row_index)
        for pass_paths, scale, weight in plan:
            with _no_param_grads(model):
                g_heads, g_skips, logits = _masked_pass(model, tokens, pass_paths, scale, dims, score)
            n_passes += len(docs)
            if method == "atp":  # the masks are ones: this is the unablated run
                base_metric[docs] = [float(_scorer(rows, [i], row_index)(logits)) for i in docs]
            for l, g in g_heads.items():
                per_doc = torch.zeros((n_docs, dims.n_heads), dtype=torch.float64, device=device)
                per_doc.index_add_(0, owner, g.to(torch.float64))
                head_est[l] -= weight * per_doc.cpu().numpy()
            for l, g in g_skips.items():
                per_doc = torch.zeros(n_docs, dtype=torch.float64, device=device)
                per_doc.index_add_(0, owner, g.to(torch.float64))
                skip_est[l] -= weight * per_doc.cpu().numpy()
        if method != "atp":
            with torch.no_grad():
                logits = model(tokens, use_cache=False)
            base_metric[docs] = [float(_scorer(rows, [i], row_index)(logits)) for i in docs]
            n_forwards += len(docs)
    records = []
    r = dims.group_size
    for cid, iv in zip(ids, ivs):
        if iv.kind == "head":
            per_doc = head_est[iv.layer][:, iv.index]
        elif iv.kind == "group":
            per_doc = head_est[iv.layer][:, iv.index * r : (iv.index + 1) * r].sum(axis=1)
        else:
            per_doc = skip_est[iv.layer]
        records.append(
            {
                "condition": cid,
                "kind": iv.kind,
                "layer": iv.layer,
                "index": iv.index,
                "estimate": float(per_doc.mean()),
                "estimate_abs": float(np.abs(per_doc).mean()),
                "n": n_docs,
            }
        )
    df = pd.DataFrame(records, columns=["condition", "kind", "layer", "index", "estimate", "estimate_abs", "n"])
    cost = (3.0 * n_passes + n_forwards) / max(n_docs, 1)  # full passes over the documents; backward = 2 forwards
    df.attrs.update(
        method=method,
        metric=metric,
        steps=n_steps if method == "ig" else None,
        baseline_metric=float(base_metric.mean()),
        forward_equivalents=cost,
    )
    return df


@contextlib.contextmanager
def _no_param_grads(model: torch.nn.Module) -> Iterator[None]:
    """Parameters out of the autograd graph for the duration (only the masks need gradients)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
