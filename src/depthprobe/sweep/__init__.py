"""Sweeps: the runner (:mod:`.runner`) with its executors (:mod:`.executor`), over the conditions and
engines of :mod:`depthprobe.engine`. Every name that ``depthprobe.sweep`` had is importable from here."""

from depthprobe.engine.choices import score_conditions_reuse
from depthprobe.engine.grids import (
    BASELINE,
    Condition,
    block_grid,
    condition_digest,
    condition_from_id,
    condition_id,
    condition_info,
    grid_names,
    group_grid,
    head_grid,
    head_weights_grid,
    layer_grid,
    parse_grid,
    unit_grid,
)
from depthprobe.engine.logits import condition_logits, iter_condition_logits, plan_tails, score_conditions
from depthprobe.sweep.executor import (
    ConditionResult,
    Executor,
    InProcessExecutor,
    SweepSpec,
    UnitRunner,
    WorkUnit,
)
from depthprobe.sweep.runner import (
    ConditionsOrGrid,
    EvaluateCondition,
    plan_units,
    run_sweep,
    sweep_conditions,
)

__all__ = [
    "BASELINE",
    "Condition",
    "ConditionResult",
    "ConditionsOrGrid",
    "EvaluateCondition",
    "Executor",
    "InProcessExecutor",
    "SweepSpec",
    "UnitRunner",
    "WorkUnit",
    "block_grid",
    "condition_from_id",
    "condition_id",
    "condition_info",
    "condition_logits",
    "grid_names",
    "group_grid",
    "head_grid",
    "head_weights_grid",
    "iter_condition_logits",
    "layer_grid",
    "parse_grid",
    "plan_tails",
    "plan_units",
    "run_sweep",
    "score_conditions",
    "condition_digest",
    "score_conditions_reuse",
    "sweep_conditions",
    "unit_grid",
]
