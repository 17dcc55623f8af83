"""Document shards of one generation condition: a condition split over workers by documents, and merged back.

For generation sweeps with fewer conditions than workers (:class:`~depthprobe.executors.ray.RayExecutor`),
each shard runs the same code path as ``evaluate`` on a contiguous slice of the documents, and
:func:`merge_shards` recomputes the condition's metrics from the concatenated samples exactly as
``evaluate`` aggregates them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

from depthprobe.engine.grids import condition_id
from depthprobe.evaluator import _aggregate, _evaluate_generation
from depthprobe.interventions import ablate
from depthprobe.sweep.executor import ConditionResult, UnitRunner

__all__ = ["Shard", "evaluate_shard", "merge_shards"]

Shard = tuple[int, int]  # (index, count)


def evaluate_shard(runner: UnitRunner, condition: Sequence[Any], index: int, count: int) -> ConditionResult:
    """Evaluate ``condition`` on shard ``index`` of ``count`` contiguous slices of the sweep's documents.

    The same code path as ``evaluate`` (request preparation, decoding, filters), on a slice of
    the same instances; :func:`merge_shards` puts the slices back together.
    """
    s, task = runner.spec, runner.task
    if task.output_type != "generate_until":
        raise ValueError(f"document shards are for generation tasks; {task.name!r} is {task.output_type}")
    instances = runner.instances
    n = len(instances)
    part = instances[index * n // count : (index + 1) * n // count]
    start = time.perf_counter()
    if not part:
        return ConditionResult(list(condition), {}, None, 0.0, {"shard": (index, count)})
    chat = dict(s.chat_options)
    config: dict[str, Any] = {}
    with ablate(runner.model, *condition):
        result = _evaluate_generation(
            runner.model,
            task,
            part,
            s.batch_size,
            s.max_gen_toks,
            config,
            chat=bool(chat.get("chat", False)),
            enable_thinking=chat.get("enable_thinking"),
        )
    return ConditionResult(
        list(condition), result.metrics, result.samples, time.perf_counter() - start, {"shard": (index, count)}
    )


def merge_shards(task: Any, parts: Sequence[ConditionResult]) -> ConditionResult:
    """One condition from its document shards (in shard order): samples concatenated, metrics recomputed
    exactly as ``evaluate`` aggregates them."""
    frames = [p.samples for p in parts if p.samples is not None and len(p.samples)]
    if not frames:
        raise ValueError(f"no documents in any shard of condition {condition_id(parts[0].condition)!r}")
    samples = pd.concat(frames, ignore_index=True)
    gen = task.generation
    metrics = _aggregate(samples, {f"exact_match,{f.name}": f"exact_match,{f.name}" for f in gen.filters})
    return ConditionResult(
        list(parts[0].condition), metrics, samples, sum(p.wall_s for p in parts), {"shards": len(parts)}
    )
