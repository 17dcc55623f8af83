"""How a sweep's planned units of work are executed: the seam a distributed executor implements.

The runner (:func:`~depthprobe.sweep.runner.run_sweep`) decides *what* to run: it checks the
conditions once, skips those already stored, and plans :class:`WorkUnit` values (conditions
scored together through the engine, or one condition evaluated under ``ablate``). An
:class:`Executor` decides *how*: :class:`InProcessExecutor` runs the units one after another on
the given model, exactly as depthprobe always has. Units and the :class:`SweepSpec` they share
are plain values (interventions are picklable data), so another executor can send them to
workers that hold their own copy of the model; each finished condition is reported through
``on_result`` and stored by the runner at once, so a killed sweep loses at most what was in flight.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pandas as pd
import torch

from depthprobe.engine.choices import score_conditions_reuse
from depthprobe.engine.generation import generate_conditions
from depthprobe.engine.grids import BASELINE, condition_id
from depthprobe.engine.verify import with_divergence
from depthprobe.evaluation.fast_decode import decoder_for
from depthprobe.evaluator import TruncationWarning, choice_result, evaluate, generation_result, shared_prefix
from depthprobe.identity import ResolvedModel, resolved
from depthprobe.interventions import Intervention, ablate
from depthprobe.interventions.weights import hook_free_allowed
from depthprobe.tasks import get_task

__all__ = ["ConditionResult", "Executor", "InProcessExecutor", "SweepSpec", "UnitRunner", "WorkUnit"]


@dataclass(frozen=True)
class SweepSpec:
    """What every unit of one sweep shares: the task and how it is evaluated (plain data)."""

    task: Any  # a task name, or a Task instance (in-process only)
    task_options: tuple[tuple[str, Any], ...] = ()
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 16
    data_dir: str | None = None
    max_gen_toks: int | None = None
    chat_options: tuple[tuple[str, Any], ...] = ()
    #: generation conditions whose every intervention has an exact weight edit decode hook-free
    hook_free: bool = True
    #: attention of the hook-free decoder (None: the bridge's own, token-identical to the hooks)
    attn_implementation: str | None = None
    #: rows of one generation decode batch (conditions x documents) in an engine unit; None: no bound
    max_rows: int | None = 256
    #: generation: "baseline" verifies the baseline's generation and decodes from each divergence; None every token
    draft: str | None = "baseline"


@dataclass(frozen=True)
class WorkUnit:
    """Conditions evaluated together: through the engine in one pass (``engine=True``: multiple-choice
    scoring, or generation with the conditions as row blocks of each decode batch), or each by
    ``evaluate`` under ``ablate``."""

    conditions: tuple[tuple[Intervention, ...], ...]
    engine: bool

    @property
    def ids(self) -> list[str]:
        return [condition_id(c) for c in self.conditions]


@dataclass
class ConditionResult:
    """One finished condition: its metrics, per-sample rows and the wall time it took."""

    condition: list[Intervention]
    metrics: Mapping[str, float]
    samples: pd.DataFrame | None
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Executor(Protocol):
    """Runs planned units on a model and reports every finished condition through ``on_result``.

    ``model`` is what ``run_sweep`` was given (a loaded model or a ``ModelSpec`` its workers load);
    the in-process executor receives it resolved once (:class:`~depthprobe.identity.ResolvedModel`).
    """

    def run(
        self,
        model: torch.nn.Module | ResolvedModel,
        spec: SweepSpec,
        units: Sequence[WorkUnit],
        on_result: Callable[[ConditionResult], None],
    ) -> None: ...


class UnitRunner:
    """Evaluates work units of one sweep on one model (task and documents built once)."""

    def __init__(self, model: torch.nn.Module | ResolvedModel, spec: SweepSpec) -> None:
        self.resolved = resolved(model)  # dimensions, identity and adapter read once, for every unit
        self.model = self.resolved.model
        self.spec = spec
        options = dict(spec.task_options)
        self.task = get_task(spec.task, **options) if isinstance(spec.task, str) else spec.task
        self._instances: list[Any] | None = None
        self._baseline: list[Any] | None = None  # the baseline's generations, decoded once per runner

    @property
    def instances(self) -> list[Any]:
        if self._instances is None:
            s = self.spec
            self._instances = self.task.instances(limit=s.limit, num_fewshot=s.num_fewshot, data_dir=s.data_dir)
        return self._instances

    def run(self, unit: WorkUnit) -> list[ConditionResult]:
        if not unit.engine:
            return [self._evaluate(list(c)) for c in unit.conditions]
        return self._generate(unit) if self.task.output_type == "generate_until" else self._engine(unit)

    def _engine(self, unit: WorkUnit) -> list[ConditionResult]:
        s, t = self.spec, self.task
        shots = t.default_num_fewshot if s.num_fewshot is None else s.num_fewshot
        config = {
            "task": t.name,
            "limit": s.limit,
            "num_fewshot": shots,
            "batch_size": s.batch_size,
            "engine": True,
            **dict(s.task_options),
        }
        instances = self.instances
        requests = [(i.prompt, i.continuations) for i in instances]
        start = time.perf_counter()
        scores = score_conditions_reuse(
            self.resolved, requests, list(unit.conditions), batch_size=s.batch_size, max_rows=s.max_rows
        )
        wall = time.perf_counter() - start
        out = []
        for k, cond in enumerate(unit.conditions):
            result = choice_result(t, instances, scores[condition_id(cond)], dict(config), {"n_docs": len(instances)})
            out.append(ConditionResult(list(cond), result.metrics, result.samples, wall if k == 0 else 0.0))
        return out

    def _generate(self, unit: WorkUnit) -> list[ConditionResult]:
        s, t = self.spec, self.task
        if s.chat_options:
            raise ValueError("chat generation runs one condition at a time: plan it with engine=False")
        gen = t.generation
        assert gen is not None
        instances = self.instances
        prompts = [i.prompt for i in instances]
        prefix = shared_prefix(prompts, t.fewshot_delimiter)
        rest = [p[len(prefix) :] for p in prompts]
        kw = dict(
            until=list(gen.until),
            max_gen_toks=gen.max_gen_toks if s.max_gen_toks is None else s.max_gen_toks,
            batch_size=s.batch_size,
            prefix=prefix or None,
            max_rows=s.max_rows,
            hook_free=s.hook_free,
            attn_implementation=s.attn_implementation,
        )
        start = time.perf_counter()
        if self._baseline is None:  # decoded alone, first: every condition is verified against (and compared with) it
            self._baseline = generate_conditions(self.model, rest, [[]], **kw)[BASELINE]
        others = [c for c in unit.conditions if len(c)]
        outputs = (
            generate_conditions(
                self.model, rest, others, draft=s.draft, baseline=[g.tokens for g in self._baseline], **kw
            )
            if others
            else {}
        )
        outputs[BASELINE] = self._baseline
        wall = time.perf_counter() - start
        out = []
        for k, cond in enumerate(unit.conditions):
            gens = outputs[condition_id(cond)]
            result = generation_result(t, instances, gens, {}, prefix)
            metrics, samples = with_divergence(result.metrics, result.samples, gens, self._baseline)
            decoder = "hook_free" if s.hook_free and hook_free_allowed(cond) else "hooks"
            out.append(
                ConditionResult(
                    list(cond),
                    metrics,
                    samples,
                    wall if k == 0 else 0.0,
                    {"decoder": decoder, "batched_with": len(unit.conditions)},
                )
            )
        return out

    def _evaluate(self, condition: list[Intervention]) -> ConditionResult:
        s = self.spec
        kwargs: dict[str, Any] = {
            "limit": s.limit,
            "num_fewshot": s.num_fewshot,
            "batch_size": s.batch_size,
            "data_dir": s.data_dir,
        }
        if s.max_gen_toks is not None:
            kwargs["max_gen_toks"] = s.max_gen_toks
        kwargs.update(dict(s.chat_options))

        start = time.perf_counter()
        decoder = None
        if self.task.output_type == "generate_until":
            decoder = decoder_for(condition, hook_free=s.hook_free, attn_implementation=s.attn_implementation)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=TruncationWarning)  # the runner says it once, not per condition
            if decoder is not None:  # exact weight edits on the plain model: no hooks to apply
                result = evaluate(self.model, self.task, decoder=decoder, **kwargs)
            else:
                with ablate(self.model, *condition):
                    result = evaluate(self.model, self.task, **kwargs)
        wall = time.perf_counter() - start
        metrics, samples = result.metrics, result.samples
        if result.generations is not None:  # generation: how far it keeps the baseline's tokens, as the engine reports
            if not condition:
                self._baseline = result.generations
            elif self._baseline is None:  # the baseline is stored already (a resumed run) or runs on another worker
                self._evaluate([])
            metrics, samples = with_divergence(metrics, samples, result.generations, self._baseline)
        return ConditionResult(
            condition,
            metrics,
            samples,
            wall,
            {"decoder": "hook_free" if decoder is not None else "hooks"}
            if self.task.output_type == "generate_until"
            else {},
        )


class InProcessExecutor:
    """Runs every unit in this process on the given model, in order (the default)."""

    def run(
        self,
        model: torch.nn.Module | ResolvedModel,
        spec: SweepSpec,
        units: Sequence[WorkUnit],
        on_result: Callable[[ConditionResult], None],
    ) -> None:
        runner = UnitRunner(model, spec)
        for unit in units:
            for result in runner.run(unit):
                on_result(result)
