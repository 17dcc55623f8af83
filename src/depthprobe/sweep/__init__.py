"""Sweeps, in three parts: grids of conditions (:mod:`.grids`), the logits engine that reuses the
unablated computation (:mod:`.engine`), and the runner with its executors (:mod:`.runner`,
:mod:`.executor`). Every name that ``depthprobe.sweep`` had is importable from here."""

from depthprobe.adapter import tail_only as _tail_only_fn
from depthprobe.sweep.engine import condition_logits, iter_condition_logits, plan_tails, score_conditions
from depthprobe.sweep.mc_engine import score_conditions_reuse
from depthprobe.sweep.executor import (
    ConditionResult,
    Executor,
    InProcessExecutor,
    SweepSpec,
    UnitRunner,
    WorkUnit,
)
from depthprobe.sweep.grids import (
    BASELINE,
    Condition,
    block_grid,
    condition_from_id,
    condition_id,
    grid_names,
    group_grid,
    head_grid,
    head_weights_grid,
    layer_grid,
    parse_grid,
    unit_grid,
)
from depthprobe.sweep.runner import (
    ConditionsOrGrid,
    EvaluateCondition,
    condition_info,
    plan_units,
    run_sweep,
    condition_digest,
    sweep_conditions,
)

_plan = plan_tails
_tail_only = _tail_only_fn
_condition_info = condition_info

__all__ = [
    "BASELINE",
    "Condition",
    "ConditionResult",
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
