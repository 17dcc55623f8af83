"""Any lm-evaluation-harness task as a depthprobe task: ``get_task("lm_eval:<name>")``.

The task is lm-eval's own (its YAML: prompt, few-shot sampler, filters, metrics), never
copied; depthprobe evaluates it by running lm-eval's evaluator on the depthprobe backend
(``depthprobe.lm_eval_backend``), so every active intervention applies. This is what lets
``run_sweep(model, "lm_eval:<name>", grid)`` sweep any multiple-choice or generate_until task
with run directories, resume and figures. Local task YAMLs come in with ``include_path=``.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Any

import pandas as pd

from depthprobe.evaluation.result import EvalResult
from depthprobe.lm_eval_backend import lm_eval_model
from depthprobe.tasks.base import Instance, Task, check_counts

__all__ = ["LM_EVAL_PREFIX", "LmEvalTask"]

LM_EVAL_PREFIX = "lm_eval:"
_SWEEPABLE = ("multiple_choice", "generate_until")


@lru_cache(maxsize=8)
def _task_manager(include_path: str | None) -> Any:
    """lm-eval's task index (about 10 s to build), once per process and include path."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


class LmEvalTask(Task):
    """An lm-eval task by name, evaluated by lm-eval on the depthprobe backend."""

    scorer = "lm_eval"

    def __init__(self, task: str, *, include_path: str | os.PathLike[str] | None = None) -> None:
        try:
            from lm_eval.tasks import get_task_dict
        except ImportError:
            raise ValueError("lm_eval: tasks need lm-evaluation-harness: pip install 'depthprobe[lm_eval]'") from None
        self.lm_eval_name = str(task)
        self.name = LM_EVAL_PREFIX + self.lm_eval_name
        self.include_path = None if include_path is None else str(include_path)
        manager = _task_manager(self.include_path)
        if self.lm_eval_name not in manager.all_tasks:
            import difflib

            close = difflib.get_close_matches(self.lm_eval_name, manager.all_tasks, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"lm-eval has no task {self.lm_eval_name!r}{hint}; list them with "
                f"`lm-eval ls tasks`, or add YAMLs with include_path="
            )
        tasks = get_task_dict([self.lm_eval_name], manager)
        if len(tasks) != 1 or not hasattr(next(iter(tasks.values())), "OUTPUT_TYPE"):
            raise ValueError(f"{self.lm_eval_name!r} is an lm-eval group; sweep its tasks one at a time")
        lm_task = next(iter(tasks.values()))
        self._lm_task_object = lm_task
        if lm_task.OUTPUT_TYPE not in _SWEEPABLE:
            raise ValueError(
                f"lm-eval task {self.lm_eval_name!r} has output type {lm_task.OUTPUT_TYPE!r}; sweeps "
                f"take {' or '.join(_SWEEPABLE)} tasks (evaluate others with "
                "lm_eval.simple_evaluate(model='depthprobe', ...))"
            )
        self.output_type = lm_task.OUTPUT_TYPE
        self.default_num_fewshot = int(lm_task.config.num_fewshot or 0)
        self.metric_names = tuple(m["metric"] for m in lm_task.config.metric_list or [])

    def _lm_task(self) -> Any:
        """lm-eval's task object, built once (building it loads the dataset)."""
        return self._lm_task_object

    def instances(
        self,
        *,
        limit: int | None = None,
        num_fewshot: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> list[Instance]:
        """The documents lm-eval will evaluate, as text, choices and target (what the run identity hashes).

        lm-eval builds the prompts itself (its few-shot sampler); these are its ``doc_to_text``.
        """
        check_counts(limit, self.default_num_fewshot if num_fewshot is None else num_fewshot)
        if data_dir is not None:
            raise ValueError(f"{self.name}: data comes from the lm-eval task's YAML; pass include_path=, not data_dir=")
        lm_task = self._lm_task()
        docs = list(lm_task.eval_docs)
        docs = docs[:limit] if limit is not None else docs
        out = []
        for i, doc in enumerate(docs):
            choices = tuple(map(str, lm_task.doc_to_choice(doc))) if self.output_type == "multiple_choice" else None
            out.append(
                Instance(
                    i,
                    str(lm_task.doc_to_text(doc)),
                    str(lm_task.doc_to_target(doc)),
                    choices,
                    str(lm_task.config.target_delimiter),
                    dict(doc),
                )
            )
        return out

    @property
    def primary_metric(self) -> str:
        """The metric a figure plots: the task's first, under its first filter."""
        lm_task = self._lm_task()
        filters = [f.name for f in getattr(lm_task, "_filters", [])] or ["none"]
        metric = self.metric_names[0] if self.metric_names else "acc"
        return metric if filters[0] == "none" else f"{metric},{filters[0]}"

    def run(self, model: Any, *, limit: int | None, num_fewshot: int | None, batch_size: int) -> EvalResult:
        """lm-eval's evaluator on ``model`` (its active hooks apply): an ``EvalResult``."""
        import lm_eval

        out = lm_eval.simple_evaluate(
            model=lm_eval_model(model, batch_size=batch_size),
            tasks=[self.lm_eval_name],
            task_manager=_task_manager(self.include_path),
            num_fewshot=num_fewshot,
            limit=limit,
            log_samples=True,
            use_cache=None,
            verbosity="ERROR",
        )
        metrics = _metrics(out["results"][self.lm_eval_name])
        samples = _samples(sorted(out["samples"][self.lm_eval_name], key=lambda s: s["doc_id"]), self.output_type)
        k = self.default_num_fewshot if num_fewshot is None else num_fewshot
        config = {
            "task": self.name,
            "limit": limit,
            "num_fewshot": k,
            "batch_size": batch_size,
            "include_path": self.include_path,
        }
        return EvalResult(self.name, metrics, samples, config, {"n_docs": len(samples)})


def _metrics(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's ``acc,none`` / ``exact_match,strict-match`` keys as depthprobe names
    (``acc``, ``exact_match,strict-match``)."""
    out: dict[str, float] = {}
    for key, value in results.items():
        if "," not in key or isinstance(value, str):
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else key
        out[name] = math.nan if value in (None, "N/A") else float(value)
    return out


def _samples(samples: list[dict[str, Any]], output_type: str) -> pd.DataFrame:
    """One row per document: doc id, target, what the model answered, and each per-document metric
    (``acc``; ``exact_match,<filter>`` for each of a generation task's filters)."""
    rows: dict[int, dict[str, Any]] = {}
    for s in samples:
        row = rows.setdefault(s["doc_id"], {"doc_id": s["doc_id"], "target": str(s.get("target"))})
        filt = s.get("filter", "none")
        if output_type == "multiple_choice":
            row["loglikelihoods"] = [float(r[0][0]) for r in s["resps"]]
            row["is_greedy"] = [bool(r[0][1]) for r in s["resps"]]
        else:
            row["generation"] = s["resps"][0][0]
            row[f"filtered,{filt}"] = s["filtered_resps"][0] if s["filtered_resps"] else None
        for metric in s.get("metrics", []):
            value = s.get(metric)
            if isinstance(value, (int, float, bool)):
                row[metric if filt == "none" else f"{metric},{filt}"] = float(value)
    return pd.DataFrame([rows[d] for d in sorted(rows)])
