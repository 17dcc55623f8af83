"""``EvalResult``: what one evaluation of one task returns (below tasks and the evaluator, which both build it)."""

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["EvalResult"]


@dataclass
class EvalResult:
    """Aggregated ``metrics`` (lm-eval names, each with ``<name>_stderr``) and one ``samples`` row per document.

    ``stats`` records the work done: documents, requests, forwards, token positions computed,
    left-truncated requests, generations that hit ``max_gen_toks``, wall time. ``generations``
    holds a generation task's decoded values (with their token ids), in memory only: a sweep
    compares them with the baseline's token by token.
    """

    task: str
    metrics: dict[str, float]
    samples: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    generations: list[Any] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items() if "_stderr" not in k)
        return f"EvalResult(task={self.task!r}, n={len(self.samples)}, {shown})"
