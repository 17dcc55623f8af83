"""Exact effects on the attribution metric (what :func:`~depthprobe.attribution.attribute` estimates), and
choosing which conditions a screen sends to exact ablation."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from depthprobe.attribution.requests import MetricRequest, Prescreen, doc_metric, metric_requests
from depthprobe.engine.grids import BASELINE, Condition, condition_id, parse_grid
from depthprobe.engine.logits import score_conditions
from depthprobe.identity import ResolvedModel, resolved

__all__ = ["exact_effects", "per_document_metric", "recall", "select"]

# ---------------------------------------------------------------------------------------
# Exact effects on the same metric, through the sweep engine.


def exact_effects(
    model: torch.nn.Module | ResolvedModel,
    task: Any,
    conditions: str | Sequence[Condition],
    *,
    metric: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    **task_options: Any,
) -> pd.DataFrame:
    """Exact-ablation delta of the attribution ``metric`` per condition (the reference :func:`attribute` estimates).

    Scored with the sweep engine (``score_conditions``: lm-eval's windows, each condition a
    real ablated forward). One row per condition: ``exact`` (mean per-document delta),
    ``exact_abs`` (mean absolute delta), ``exact_stderr`` (paired standard error) and ``n``.
    """
    conditions = (
        parse_grid(resolved(model).dims, conditions) if isinstance(conditions, str) else [list(c) for c in conditions]
    )
    conditions = [c for c in conditions if len(c)]
    metric, requests = metric_requests(
        task, metric=metric, limit=limit, num_fewshot=num_fewshot, data_dir=data_dir, **task_options
    )
    per_doc = per_document_metric(model, requests, [[]] + conditions, batch_size=batch_size)
    base = per_doc[BASELINE]
    rows = []
    for cond in conditions:
        cid = condition_id(cond)
        d = per_doc[cid] - base
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
        rows.append(
            {
                "condition": cid,
                "exact": float(d.mean()),
                "exact_abs": float(np.abs(d).mean()),
                "exact_stderr": se,
                "n": len(d),
            }
        )
    out = pd.DataFrame(rows, columns=["condition", "exact", "exact_abs", "exact_stderr", "n"])
    out.attrs.update(metric=metric, baseline_metric=float(base.mean()))
    return out


def per_document_metric(
    model: torch.nn.Module | ResolvedModel,
    requests: Sequence[MetricRequest],
    conditions: Sequence[Condition],
    *,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """The metric of every document under every condition (exact ablation, no gradients)."""
    scores = score_conditions(
        model, [(r.context, r.continuations) for r in requests], conditions, batch_size=batch_size
    )
    return {
        cid: np.array([doc_metric(list(s.loglikelihoods), r.gold) for s, r in zip(doc_scores, requests)])
        for cid, doc_scores in scores.items()
    }


# ---------------------------------------------------------------------------------------
# Selection for the exact sweep.


def select(estimates: pd.DataFrame, prescreen: Prescreen) -> dict[str, str]:
    """Condition id -> ``"top"`` (the ``top_k`` largest ``estimate_abs``) or ``"random"`` (a seeded sample of the rest)."""
    ranked = estimates.sort_values(["estimate_abs", "condition"], ascending=[False, True], kind="stable")
    ids = ranked["condition"].tolist()
    top = ids[: prescreen.top_k]
    rest = sorted(ids[prescreen.top_k :])
    rng = np.random.default_rng(prescreen.seed)
    sample = [rest[i] for i in sorted(rng.choice(len(rest), size=min(prescreen.random_k, len(rest)), replace=False))]
    return {**{c: "top" for c in top}, **{c: "random" for c in sample}}


def recall(measured: pd.DataFrame, k: int, *, exact: str = "exact_abs") -> float:
    """Top-``k`` recall of the screen on what was measured: the share of the ``k`` largest ``exact`` effects it ranked top.

    ``measured`` has one row per exactly ablated condition with ``screen`` (``top``/``random``)
    and the ``exact`` column; the true top-k is taken among them (the random sample is what
    lets a miss show). NaN when fewer than ``k`` conditions were measured.
    """
    rows = measured.dropna(subset=[exact])
    if k < 1 or len(rows) < k:
        return math.nan
    truth = rows.sort_values([exact, "condition"], ascending=[False, True], kind="stable")["condition"].head(k)
    top = set(rows.loc[rows["screen"] == "top", "condition"])
    return len(set(truth) & top) / k
