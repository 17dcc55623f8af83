"""Applying interventions: check them against a model, bind them, order their hooks, install and remove them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, Union

import torch

from depthprobe.interventions.base import Bound, Hook, Intervention, flatten
from depthprobe.models import ModelDims, model_dims

__all__ = ["ablate", "bind_all", "collect_hooks", "validate"]

Interventions = Union[Intervention, Iterable[Any]]


def validate(dims_or_model: ModelDims | torch.nn.Module, *interventions: Interventions) -> list[Intervention]:
    """Flatten ``interventions`` and check every layer, head and group against the model.

    Raises ``ValueError`` naming the valid range.
    """
    dims = dims_or_model if isinstance(dims_or_model, ModelDims) else model_dims(dims_or_model)
    flat = list(flatten(interventions))
    for iv in flat:
        iv.check(dims)
    return flat


def bind_all(model: torch.nn.Module | None, *interventions: Interventions) -> list[Bound]:
    """Every intervention bound to ``model`` (None: only types that need no model)."""
    return [iv.bind(model) for iv in flatten(interventions)]


def order_hooks(bound: Iterable[Bound]) -> list[Hook]:
    """Hooks in an order that composes: every edit, then every observer (which must see the edited value)."""
    bound = list(bound)
    return [h for b in bound for h in b.edits] + [h for b in bound for h in b.observers]


def collect_hooks(*interventions: Interventions, model: torch.nn.Module | None = None) -> list[Hook]:
    """All hooks of ``interventions``, bound to ``model``, in an order that composes correctly.

    The o_proj patch observes ``hook_z`` after every other edit of it (so a head ablation in
    the same layer is seen by the patch), hence observers go last. Types that read the model
    (``o_proj``, ``head_weights``, ``mean_head``) need ``model=``.
    """
    return order_hooks(bind_all(model, *interventions))


@contextlib.contextmanager
def ablate(model: torch.nn.Module, *interventions: Interventions) -> Iterator[torch.nn.Module]:
    """Apply ``interventions`` to ``model`` for the duration of the block, then always remove them.

    Each is bound to ``model`` first (ranges checked, weights or reference activations read,
    under the model as it is before these hooks are installed).

    >>> with ablate(model, skip_layer(3), zero_head(5, 2)):
    ...     logits = model(tokens)
    """
    flat = validate(model, *interventions)
    hooks = order_hooks(bind_all(model, flat))
    with model.hooks(fwd_hooks=hooks):
        yield model
