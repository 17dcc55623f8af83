"""Attribution pre-screening: every head's (and layer's) zero-ablation effect estimated from gradients.

An exact per-head map costs one ablation per head; :func:`attribute` estimates them all from
one forward and one backward pass per batch (``method="atp"``, attribution patching towards
zero). Each component's output is multiplied by a mask of ones that autograd differentiates:

- head h of layer l: ``z[:, :, h] *= m[l, h]`` on ``hook_z``; ``dM/dm = sum_{pos, d_head} z * dM/dz``,
  so the estimated delta of zeroing it is ``-dM/dm`` (the linearisation at the unablated run);
- a GQA group (``zero_kv_group``): the sum of its heads' estimates (zeroing its values zeroes
  exactly those heads' outputs);
- a layer skip: one mask on both ``hook_attn_out`` and ``hook_mlp_out``; estimate
  ``-(attn_out . dM/dresid_mid + mlp_out . dM/dresid_post)``.

``method="ig"`` (integrated gradients) integrates ``dM/dm`` along the path that scales one
layer's heads (or its skip) from 1 to 0, ``steps`` midpoints per layer; the heads of a layer
then sum exactly to ablating them all together (completeness), at ``steps`` passes per layer.

Metrics ``M`` per document: ``logit_diff`` (multiple choice): the gold choice's log-likelihood
minus the best distractor's, lm-eval's summed log-probabilities on its own windows; for
single-token choices this is exactly the logit difference at the answer position. ``logprob``
(generation tasks): the teacher-forced log-probability of the reference answer. Both are
unsaturated: log P(gold | choices) saturates and its gradients vanish.

What it is good for: ranking by *mean absolute* effect (``estimate_abs``) — on the organism the
Spearman correlation with exact ablation was 0.99 on retrieval and knowledge — not for signs or
signed means (0.11-0.39; integrated gradients 0.69-0.72). Confirm with exact ablation
(``run_sweep(..., prescreen=Prescreen(...))``).

TransformerLens 4.3's ``tools.analysis.attribution_patching`` captures gradients with
backward hooks for clean/corrupt patching one example at a time, without a zero-ablation mode;
masks give the per-row, per-head gradients of a whole batch, and the scaled paths integrated
gradients need, directly, so that module is not used here.
"""

from __future__ import annotations

import contextlib
import math
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

from depthprobe.interventions import Intervention
from depthprobe.models import ModelDims, model_dims
from depthprobe.sweep import BASELINE, Condition, condition_digest, condition_id, parse_grid, score_conditions
from depthprobe.types import HeadActs, Resid

__all__ = ["METHODS", "METRICS", "Prescreen", "attribute", "exact_effects", "metric_requests", "prescreen_report",
           "recall", "screen_conditions", "select"]

METHODS = ("atp", "ig")
#: Attribution metrics: ``logit_diff`` for multiple-choice tasks, ``logprob`` for generation tasks.
METRICS = ("logit_diff", "logprob")
_KINDS = ("head", "group", "skip")


@dataclass(frozen=True)
class Prescreen:
    """Attribute first, then exact-ablate the ``top_k`` conditions by ``estimate_abs`` plus ``random_k`` of the rest.

    The random sample (drawn with ``seed``) measures what the screen misses. ``method``,
    ``metric`` and ``steps`` go to :func:`attribute`.
    """

    top_k: int
    random_k: int = 0
    method: str = "atp"
    metric: str | None = None
    steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_k", "random_k", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Prescreen.{name} must be a non-negative int, got {value!r}")
        if self.top_k + self.random_k < 1:
            raise ValueError("Prescreen needs top_k + random_k >= 1 conditions to measure")
        _check_method(self.method, self.steps)


def _check_method(method: str, steps: int | None) -> int:
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; valid: {', '.join(METHODS)}")
    if method == "atp":
        if steps is not None:
            raise ValueError("steps= applies to method='ig' only")
        return 1
    steps = 5 if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return steps


# ---------------------------------------------------------------------------------------
# Metric requests: what M scores for each document, on lm-eval's windows.


@dataclass(frozen=True)
class MetricRequest:
    """One document's scored continuations; ``gold`` indexes them (``logprob`` has one)."""

    context: str
    continuations: tuple[str, ...]
    gold: int


def _task(task: Any, task_options: dict[str, Any]) -> Any:
    from depthprobe.tasks import get_task

    return get_task(task, **task_options) if isinstance(task, str) else get_task(task)


def _metric_for(t: Any, metric: str | None) -> str:
    natural = "logit_diff" if t.output_type == "multiple_choice" else "logprob"
    metric = natural if metric is None else metric
    if metric not in METRICS:
        raise ValueError(f"unknown attribution metric {metric!r}; valid: {', '.join(METRICS)}")
    if metric != natural:
        raise ValueError(f"metric {metric!r} does not fit task {t.name!r} ({t.output_type}); use {natural!r}")
    return metric


def metric_requests(task: Any, *, metric: str | None = None, limit: int | None = None,
                    num_fewshot: int | None = None, data_dir: str | os.PathLike[str] | None = None,
                    **task_options: Any) -> tuple[str, list[MetricRequest]]:
    """The metric's name and one request per document (choices and gold; or the reference answer)."""
    t = _task(task, task_options)
    if getattr(t, "scorer", "depthprobe") != "depthprobe":
        raise ValueError(f"task {t.name!r} is scored by lm-eval itself; attribution needs a depthprobe task "
                         f"(its prompts and choices): one of depthprobe.list_tasks()")
    metric = _metric_for(t, metric)
    out = []
    for inst in t.instances(limit=limit, num_fewshot=num_fewshot, data_dir=data_dir):
        if metric == "logit_diff":
            out.append(MetricRequest(inst.prompt, tuple(inst.continuations), int(inst.target)))
        else:
            out.append(MetricRequest(inst.prompt, (t.target_delimiter + t.fewshot_answer(inst.doc),), 0))
    return metric, out


def _doc_metric(lls: Sequence[Any], gold: int) -> Any:
    """M of one document from its continuations' summed log-likelihoods (floats, or scalar tensors to differentiate)."""
    if len(lls) == 1:
        return lls[0]
    others = [lls[j] for j in range(len(lls)) if j != gold]
    best = others[0]
    for x in others[1:]:
        best = torch.maximum(best, x) if isinstance(best, Tensor) else max(best, x)
    return lls[gold] - best


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


@dataclass
class _Rows:
    """A document set laid out as lm-eval windows: one row per distinct window of a document."""

    tokens: list[list[int]]
    doc_of_row: list[int]
    # per document, per continuation: (row, window length, continuation token ids)
    where: list[list[tuple[int, int, list[int]]]]
    gold: list[int]


def _layout(model: Any, requests: Sequence[MetricRequest]) -> _Rows:
    from depthprobe.evaluation.loglikelihood import encode_pair, model_max_length

    tokenizer = model.tokenizer
    max_len = model_max_length(model, tokenizer)
    rows: list[list[int]] = []
    doc_of_row: list[int] = []
    where = []
    for i, req in enumerate(requests):
        own: dict[tuple[int, ...], int] = {}  # identical windows of one document share a row
        per = []
        for cont in req.continuations:
            ctx_ids, cont_ids = encode_pair(tokenizer, req.context, cont)
            if not cont_ids:
                raise ValueError(f"document {i}: continuation {cont!r} tokenizes to zero tokens")
            window = tuple((ctx_ids + cont_ids)[-(max_len + 1):][:-1])
            if window not in own:
                own[window] = len(rows)
                rows.append(list(window))
                doc_of_row.append(i)
            per.append((own[window], len(window), cont_ids))
        where.append(per)
    return _Rows(rows, doc_of_row, where, [r.gold for r in requests])


def _batches(rows: _Rows, batch_size: int) -> list[list[int]]:
    """Whole documents per batch (their rows together), longest first, about ``batch_size`` rows each."""
    docs = sorted(range(len(rows.where)), key=lambda i: -max(n for _, n, _ in rows.where[i]))
    out: list[list[int]] = []
    current: list[int] = []
    n_rows = 0
    for i in docs:
        k = len({r for r, _, _ in rows.where[i]})
        if current and n_rows + k > batch_size:
            out.append(current)
            current, n_rows = [], 0
        current.append(i)
        n_rows += k
    if current:
        out.append(current)
    return out


@dataclass(frozen=True)
class _Paths:
    """Which masks a pass needs: layers whose heads, and layers whose skips, are attributed."""

    head_layers: tuple[int, ...]
    skip_layers: tuple[int, ...]


def _masked_pass(
    model: Any, tokens: Tensor, paths: _Paths, scale: dict[tuple[str, int], float], dims: ModelDims,
    score: Callable[[Tensor], Tensor],
) -> tuple[dict[int, Tensor], dict[int, Tensor], Tensor]:
    """One forward and backward with masks (1, or ``scale[(kind, layer)]`` on an integration path).

    Returns ``dM/dmask`` per layer, heads ``[rows, H]`` and skips ``[rows]``, and the logits;
    ``score`` maps the logits to the summed metric (documents are independent rows, so row
    gradients are per document).
    """
    batch = tokens.shape[0]
    dtype = torch.float32 if next(model.parameters()).dtype != torch.float64 else torch.float64
    head_masks = {l: torch.full((batch, dims.n_heads), scale.get(("head", l), 1.0), dtype=dtype,
                                device=tokens.device, requires_grad=True) for l in paths.head_layers}
    skip_masks = {l: torch.full((batch,), scale.get(("skip", l), 1.0), dtype=dtype, device=tokens.device,
                                requires_grad=True) for l in paths.skip_layers}
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


def _scorer(rows: _Rows, docs: list[int], row_index: dict[int, int]) -> Callable[[Tensor], Tensor]:
    def score(logits: Tensor) -> Tensor:
        total = logits.new_zeros((), dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32)
        for i in docs:
            lls = []
            for r, n, cont in rows.where[i]:
                b = row_index[r]
                lp = torch.log_softmax(logits[b, n - len(cont): n].to(total.dtype), dim=-1)
                target = torch.tensor(cont, dtype=torch.long, device=logits.device)
                lls.append(lp.gather(1, target[:, None]).sum())
            total = total + _doc_metric(lls, rows.gold[i])
        return total

    return score


def _split(conditions: Sequence[Condition], dims: ModelDims) -> tuple[list[str], list[Intervention], _Paths]:
    ids, ivs = [], []
    for cond in conditions:
        if len(cond) != 1 or cond[0].kind not in _KINDS:
            raise ValueError(f"cannot attribute condition {condition_id(cond)!r}; valid: single zero_head, "
                             f"zero_kv_group or skip_layer conditions (grids heads:L, heads:all, groups:L, layers)")
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
    model: torch.nn.Module,
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
    n_steps = _check_method(method, steps)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dims = model_dims(model)
    conditions = parse_grid(model, grid) if isinstance(grid, str) else [list(c) for c in grid]
    conditions = [c for c in conditions if len(c)]  # the baseline has nothing to estimate
    ids, ivs, paths = _split(conditions, dims)
    metric, requests = metric_requests(task, metric=metric, limit=limit, num_fewshot=num_fewshot,
                                       data_dir=data_dir, **task_options)
    rows = _layout(model, requests)
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
        plan = [(_Paths((l,), ()), {("head", l): (k + 0.5) / n_steps}, 1.0 / n_steps)
                for l in paths.head_layers for k in range(n_steps)]
        plan += [(_Paths((), (l,)), {("skip", l): (k + 0.5) / n_steps}, 1.0 / n_steps)
                 for l in paths.skip_layers for k in range(n_steps)]
    for docs in _batches(rows, batch_size):
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
            per_doc = head_est[iv.layer][:, iv.index * r:(iv.index + 1) * r].sum(axis=1)
        else:
            per_doc = skip_est[iv.layer]
        records.append({"condition": cid, "kind": iv.kind, "layer": iv.layer, "index": iv.index,
                        "estimate": float(per_doc.mean()), "estimate_abs": float(np.abs(per_doc).mean()),
                        "n": n_docs})
    df = pd.DataFrame(records, columns=["condition", "kind", "layer", "index", "estimate", "estimate_abs", "n"])
    cost = (3.0 * n_passes + n_forwards) / max(n_docs, 1)  # full passes over the documents; backward = 2 forwards
    df.attrs.update(method=method, metric=metric, steps=n_steps if method == "ig" else None,
                    baseline_metric=float(base_metric.mean()), forward_equivalents=cost)
    return df


# ---------------------------------------------------------------------------------------
# Exact effects on the same metric, through the sweep engine.


def exact_effects(
    model: torch.nn.Module,
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
    conditions = parse_grid(model, conditions) if isinstance(conditions, str) else [list(c) for c in conditions]
    conditions = [c for c in conditions if len(c)]
    metric, requests = metric_requests(task, metric=metric, limit=limit, num_fewshot=num_fewshot,
                                       data_dir=data_dir, **task_options)
    per_doc = per_document_metric(model, requests, [[]] + conditions, batch_size=batch_size)
    base = per_doc[BASELINE]
    rows = []
    for cond in conditions:
        cid = condition_id(cond)
        d = per_doc[cid] - base
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
        rows.append({"condition": cid, "exact": float(d.mean()), "exact_abs": float(np.abs(d).mean()),
                     "exact_stderr": se, "n": len(d)})
    out = pd.DataFrame(rows, columns=["condition", "exact", "exact_abs", "exact_stderr", "n"])
    out.attrs.update(metric=metric, baseline_metric=float(base.mean()))
    return out


def per_document_metric(model: torch.nn.Module, requests: Sequence[MetricRequest], conditions: Sequence[Condition],
                        *, batch_size: int = 8) -> dict[str, np.ndarray]:
    """The metric of every document under every condition (exact ablation, no gradients)."""
    scores = score_conditions(model, [(r.context, r.continuations) for r in requests], conditions,
                              batch_size=batch_size)
    return {cid: np.array([_doc_metric(list(s.loglikelihoods), r.gold) for s, r in zip(doc_scores, requests)])
            for cid, doc_scores in scores.items()}


# ---------------------------------------------------------------------------------------
# Selection for the exact sweep.


def select(estimates: pd.DataFrame, prescreen: Prescreen) -> dict[str, str]:
    """Condition id -> ``"top"`` (the ``top_k`` largest ``estimate_abs``) or ``"random"`` (a seeded sample of the rest)."""
    ranked = estimates.sort_values(["estimate_abs", "condition"], ascending=[False, True], kind="stable")
    ids = ranked["condition"].tolist()
    top = ids[: prescreen.top_k]
    rest = sorted(ids[prescreen.top_k:])
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


# ---------------------------------------------------------------------------------------
# run_sweep(..., prescreen=...): what to measure, and what the screen got right.

PRESCREEN_FILE = "prescreen.json"


def _settings(prescreen: Prescreen) -> dict[str, Any]:
    return {"top_k": prescreen.top_k, "random_k": prescreen.random_k, "method": prescreen.method,
            "metric": prescreen.metric, "steps": prescreen.steps, "seed": prescreen.seed}


def screen_conditions(
    model: torch.nn.Module, task: Any, conditions: Sequence[Condition], prescreen: Prescreen, *,
    run_dir: Any, limit: int | None, num_fewshot: int | None, data_dir: Any, batch_size: int,
) -> tuple[list[list[Intervention]], dict[str, dict[str, Any]]]:
    """Attribute every non-baseline condition, keep the baseline plus the selected ones, and their result-row extras.

    The extras of a selected condition not yet on disk: ``estimate``, ``estimate_abs``,
    ``screen`` (``top``/``random``), ``screen_metric`` and the exact delta of that metric
    (``exact``, ``exact_abs``, ``exact_stderr``, measured through the sweep engine). The whole
    estimate table goes to ``<run_dir>/prescreen.json``; a directory screened with other
    settings is refused.
    """
    import json
    from pathlib import Path

    path = Path(run_dir.path) / PRESCREEN_FILE
    settings = _settings(prescreen)
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))["settings"]
        if old != settings:
            raise ValueError(f"{run_dir.path} was pre-screened with {old}, not {settings}; use another output directory")
    candidates = [list(c) for c in conditions if len(c)]
    options = dict(limit=limit, num_fewshot=num_fewshot, data_dir=data_dir, batch_size=batch_size)
    est = attribute(model, task, candidates, method=prescreen.method, metric=prescreen.metric, steps=prescreen.steps,
                    **options)
    chosen = select(est, prescreen)
    selected = [c for c in candidates if condition_id(c) in chosen]
    todo = [c for c in selected if not run_dir.done(condition_id(c), condition_digest(c))]
    exact = (exact_effects(model, task, todo, metric=est.attrs["metric"], **options).set_index("condition")
             if todo else pd.DataFrame())
    by_id = est.set_index("condition")
    extras: dict[str, dict[str, Any]] = {}
    for cond in todo:
        cid = condition_id(cond)
        extras[cid] = {"estimate": float(by_id.loc[cid, "estimate"]), "estimate_abs": float(by_id.loc[cid, "estimate_abs"]),
                       "screen": chosen[cid], "screen_metric": est.attrs["metric"],
                       **{k: float(exact.loc[cid, k]) for k in ("exact", "exact_abs", "exact_stderr")}}
    table = est.assign(screen=est["condition"].map(chosen))
    record = {"settings": settings, "metric": est.attrs["metric"], "n_candidates": len(candidates),
              "forward_equivalents": est.attrs["forward_equivalents"],
              "estimates": json.loads(table.to_json(orient="records"))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return [[]] + selected, extras


def prescreen_report(df: pd.DataFrame, prescreen: Prescreen, metrics: Sequence[str] = ()) -> dict[str, Any]:
    """Top-k recall of the screen, computed from the exactly measured rows of ``df`` (a ``load_results`` table).

    ``recall``: on the screen's metric (``exact_abs``); ``recall_<m>``: on ``|delta_<m>|`` of each
    task metric in ``metrics``. Also how many conditions were measured, of each kind.
    """
    if "screen" not in df.columns:
        raise ValueError("these results have no pre-screened rows (no 'screen' column); run run_sweep with prescreen=")
    rows = df[df["screen"].isin(["top", "random"])]
    k = prescreen.top_k
    report: dict[str, Any] = {"top_k": k, "random_k": prescreen.random_k, "n_measured": len(rows),
                              "n_top": int((rows["screen"] == "top").sum()),
                              "n_random": int((rows["screen"] == "random").sum()),
                              "recall": recall(rows, k, exact="exact_abs")}
    for m in metrics:
        if f"delta_{m}" in rows.columns:
            report[f"recall_{m}"] = recall(rows.assign(_abs=rows[f"delta_{m}"].abs()), k, exact="_abs")
    return report
