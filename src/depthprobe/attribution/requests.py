"""What attribution scores: the settings of a screen, and each document's metric requests on lm-eval's windows.

See :mod:`depthprobe.attribution` for the method.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from depthprobe.evaluation.loglikelihood import encode_pair, model_max_length
from depthprobe.tasks import get_task

__all__ = ["METHODS", "METRICS", "MetricRequest", "Prescreen", "check_method", "doc_metric", "metric_requests"]


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
        check_method(self.method, self.steps)


def check_method(method: str, steps: int | None) -> int:
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
    return get_task(task, **task_options) if isinstance(task, str) else get_task(task)


def _metric_for(t: Any, metric: str | None) -> str:
    natural = "logit_diff" if t.output_type == "multiple_choice" else "logprob"
    metric = natural if metric is None else metric
    if metric not in METRICS:
        raise ValueError(f"unknown attribution metric {metric!r}; valid: {', '.join(METRICS)}")
    if metric != natural:
        raise ValueError(f"metric {metric!r} does not fit task {t.name!r} ({t.output_type}); use {natural!r}")
    return metric


def metric_requests(
    task: Any,
    *,
    metric: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    **task_options: Any,
) -> tuple[str, list[MetricRequest]]:
    """The metric's name and one request per document (choices and gold; or the reference answer)."""
    t = _task(task, task_options)
    if getattr(t, "scorer", "depthprobe") != "depthprobe":
        raise ValueError(
            f"task {t.name!r} is scored by lm-eval itself; attribution needs a depthprobe task "
            f"(its prompts and choices): one of depthprobe.list_tasks()"
        )
    metric = _metric_for(t, metric)
    out = []
    for inst in t.instances(limit=limit, num_fewshot=num_fewshot, data_dir=data_dir):
        if metric == "logit_diff":
            out.append(MetricRequest(inst.prompt, tuple(inst.continuations), int(inst.target)))
        else:
            out.append(MetricRequest(inst.prompt, (t.target_delimiter + t.fewshot_answer(inst.doc),), 0))
    return metric, out


def doc_metric(lls: Sequence[Any], gold: int) -> Any:
    """M of one document from its continuations' summed log-likelihoods (floats, or scalar tensors to differentiate)."""
    if len(lls) == 1:
        return lls[0]
    others = [lls[j] for j in range(len(lls)) if j != gold]
    best = others[0]
    for x in others[1:]:
        best = torch.maximum(best, x) if isinstance(best, Tensor) else max(best, x)
    return lls[gold] - best


@dataclass
class Rows:
    """A document set laid out as lm-eval windows: one row per distinct window of a document."""

    tokens: list[list[int]]
    doc_of_row: list[int]
    # per document, per continuation: (row, window length, continuation token ids)
    where: list[list[tuple[int, int, list[int]]]]
    gold: list[int]


def layout(model: Any, requests: Sequence[MetricRequest]) -> Rows:
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
            window = tuple((ctx_ids + cont_ids)[-(max_len + 1) :][:-1])
            if window not in own:
                own[window] = len(rows)
                rows.append(list(window))
                doc_of_row.append(i)
            per.append((own[window], len(window), cont_ids))
        where.append(per)
    return Rows(rows, doc_of_row, where, [r.gold for r in requests])


def batches(rows: Rows, batch_size: int) -> list[list[int]]:
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
