"""Grids: the lists of conditions a sweep runs (every layer skipped, every head of a layer ablated, ...).

A *condition* is a list of :class:`~depthprobe.interventions.Intervention`; its id is the
``"+"``-join of the interventions' ids (``"baseline"`` for the empty list). Per-layer grids of
heads or groups come from the intervention types themselves (their declared ``unit`` and
``grid`` name), so a new type with a unit gets its grid (``mean_heads:L``) without edits here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import torch

from depthprobe.interventions import INTERVENTION_TYPES, Intervention, skip_layer
from depthprobe.interventions.base import flatten
from depthprobe.models import ModelDims, model_dims

__all__ = [
    "BASELINE",
    "Condition",
    "condition_digest",
    "condition_info",
    "block_grid",
    "condition_from_id",
    "condition_id",
    "group_grid",
    "head_grid",
    "head_weights_grid",
    "layer_grid",
    "parse_grid",
    "unit_grid",
]

BASELINE = "baseline"
Condition = Sequence[Intervention]


def condition_id(condition: Condition) -> str:
    """``"+"``-joined intervention ids, or ``"baseline"`` for the empty condition."""
    return "+".join(iv.id for iv in condition) if len(condition) else BASELINE


def condition_from_id(cid: str) -> list[Intervention]:
    """The condition with this id (``"baseline"``: the empty list), for ids whose kinds need no external data."""
    if cid == BASELINE:
        return []
    return [Intervention.from_id(part) for part in cid.split("+")]


def _dims(model_or_dims: ModelDims | torch.nn.Module) -> ModelDims:
    return model_or_dims if isinstance(model_or_dims, ModelDims) else model_dims(model_or_dims)


def _check_layer(dims: ModelDims, layer: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < dims.n_layers:
        raise ValueError(f"layer {layer!r} out of range; the model has layers 0..{dims.n_layers - 1}")
    return layer


def layer_grid(model_or_dims: ModelDims | torch.nn.Module) -> list[list[Intervention]]:
    """Every layer skipped in turn: ``[[skip:L0], [skip:L1], ...]``."""
    return [[skip_layer(layer)] for layer in range(_dims(model_or_dims).n_layers)]


def unit_grid(
    model_or_dims: ModelDims | torch.nn.Module, kind: str, layer: int, **context: Any
) -> list[list[Intervention]]:
    """Every head (or GQA group) of ``layer`` under intervention type ``kind``, one condition each."""
    dims = _dims(model_or_dims)
    _check_layer(dims, layer)
    cls = INTERVENTION_TYPES.get(kind)
    if cls.unit is None:
        raise ValueError(f"intervention kind {kind!r} has no head or group unit to grid over")
    n = dims.n_heads if cls.unit == "head" else dims.n_kv_heads
    return [[cls.grid_condition(layer, i, context)] for i in range(n)]


def head_grid(model_or_dims: ModelDims | torch.nn.Module, layer: int) -> list[list[Intervention]]:
    """Every query head of ``layer`` zero-ablated in turn (true per-head ablation)."""
    return unit_grid(model_or_dims, "head", layer)


def group_grid(model_or_dims: ModelDims | torch.nn.Module, layer: int) -> list[list[Intervention]]:
    """Every GQA group (all query heads of one KV head) of ``layer`` ablated in turn."""
    return unit_grid(model_or_dims, "group", layer)


def head_weights_grid(model_or_dims: ModelDims | torch.nn.Module, layer: int) -> list[list[Intervention]]:
    """Every head of ``layer`` pruned the study's original way (q, shared k/v and o_proj columns zeroed)."""
    return unit_grid(model_or_dims, "head_weights", layer)


def block_grid(model_or_dims: ModelDims | torch.nn.Module, n: int, *, stride: int = 1) -> list[list[Intervention]]:
    """Contiguous blocks of ``n`` layers skipped together, starting every ``stride`` layers."""
    dims = _dims(model_or_dims)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= dims.n_layers:
        raise ValueError(f"block size n={n!r} out of range; valid: 1..{dims.n_layers}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    return [[skip_layer(s + i) for i in range(n)] for s in range(0, dims.n_layers - n + 1, stride)]


_GRID_RE = re.compile(r"^([a-z_]+)(?::(\d+|all))?$")


def _unit_grids() -> dict[str, str]:
    """Grid name -> intervention kind, for every type that declares a per-layer grid."""
    return {cls.grid: cls.kind for cls in INTERVENTION_TYPES if cls.grid}


def grid_names() -> list[str]:
    """Every grid spelling ``parse_grid`` accepts."""
    return (
        ["layers"] + [f"{name}:L" for name in _unit_grids()] + ["blocks:N"] + [f"{name}:all" for name in _unit_grids()]
    )


def parse_grid(model_or_dims: ModelDims | torch.nn.Module, spec: str, **context: Any) -> list[list[Intervention]]:
    """A grid from its command-line spelling: ``layers``, ``heads:L``, ``groups:L``, ``head_weights:L``,
    ``mean_heads:L`` (needs ``reference=``, see :func:`~depthprobe.interventions.mean_head`), ``blocks:N``;
    ``heads:all`` (any per-layer grid with ``all``) is that grid over every layer."""
    m = _GRID_RE.match(spec.strip())
    units = _unit_grids()
    if m is None or m.group(1) not in {"layers", "blocks", *units}:
        raise ValueError(f"unknown grid {spec!r}; valid: {', '.join(grid_names())}")
    kind, arg = m.group(1), m.group(2)
    if kind == "layers":
        if arg is not None:
            raise ValueError(f"grid 'layers' takes no argument, got {spec!r}")
        return layer_grid(model_or_dims)
    if arg is None:
        raise ValueError(f"grid {kind!r} needs a number, e.g. '{kind}:3'")
    if arg == "all":
        if kind not in units:
            raise ValueError(f"grid {kind!r} takes a number, not 'all'; valid: {', '.join(grid_names())}")
        n_layers = (model_or_dims if isinstance(model_or_dims, ModelDims) else model_dims(model_or_dims)).n_layers
        return [c for layer in range(n_layers) for c in unit_grid(model_or_dims, units[kind], layer, **context)]
    if kind == "blocks":
        return block_grid(model_or_dims, int(arg))
    return unit_grid(model_or_dims, units[kind], int(arg), **context)


def flat_conditions(conditions: Sequence[Condition]) -> list[list[Intervention]]:
    """Each condition as a flat list of interventions (nested lists flattened, anything else refused)."""
    return [list(flatten(c)) for c in conditions]


def unique_ids(conditions: Sequence[Condition]) -> list[str]:
    """The conditions' ids, refusing duplicates in one line (the one copy of that rule)."""
    ids = [condition_id(c) for c in conditions]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate conditions: {', '.join(dup)}; each condition must be unique")
    return ids


def condition_info(condition: Condition) -> dict[str, Any]:
    """What plots and tables need to place a condition: kind, first/last layer, head or group index."""
    if not len(condition):
        return {
            "kind": BASELINE,
            "layer": None,
            "layer_max": None,
            "index": None,
            "n_interventions": 0,
            "interventions": [],
            "condition_digest": condition_digest(condition),
        }
    kinds = sorted({iv.kind for iv in condition})
    layers = [iv.layer for iv in condition]
    return {
        "kind": "+".join(kinds),
        "layer": min(layers),
        "layer_max": max(layers),
        "index": condition[0].index if len(condition) == 1 else None,
        "n_interventions": len(condition),
        "interventions": [iv.id for iv in condition],
        "condition_digest": condition_digest(condition),
    }


def condition_digest(condition: Condition) -> str:
    """SHA-256 of the condition as data (every intervention's ``to_dict``): ids alone do not name an o_proj source."""
    data = [iv.to_dict() for iv in condition]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
