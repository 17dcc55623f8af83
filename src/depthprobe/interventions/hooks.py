"""The typed TransformerLens hook functions interventions are made of.

Each takes the activation and the ``HookPoint`` (plus keyword parameters bound with
:func:`partial`) and returns the edited activation, or None when it only observes. They are
public: circuit analyses pass them to ``model.run_with_hooks`` directly, e.g.
``functools.partial(zero_heads, heads=(7,))`` on ``blocks.35.attn.hook_z``. Shapes are
checked by typeguard under pytest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from depthprobe.types import HeadActs, HeadValues, KVHeadActs, OProjWeight, Resid

__all__ = ["HookFn", "partial", "replace_o_proj", "set_heads", "stash_z", "zero_heads", "zero_kv_heads", "zero_output"]

HookFn = Callable[..., Tensor | None]


def zero_output(out: Resid, hook: HookPoint) -> Resid:
    """Replace a block's attention or MLP output by zeros, so the residual passes unchanged."""
    return torch.zeros_like(out)


def zero_heads(z: HeadActs, hook: HookPoint, *, heads: tuple[int, ...]) -> HeadActs:
    """Zero the per-head attention results ``z`` (the o_proj input) of ``heads``."""
    if max(heads) >= z.shape[2]:
        raise ValueError(f"{hook.name}: head {max(heads)} out of range; the layer has {z.shape[2]} heads")
    z = z.clone()
    z[:, :, list(heads)] = 0.0
    return z


def set_heads(z: HeadActs, hook: HookPoint, *, heads: tuple[int, ...], values: HeadValues) -> HeadActs:
    """Replace the per-head results ``z`` of ``heads`` by fixed vectors ``values`` [len(heads), d_head] at every position."""
    if max(heads) >= z.shape[2]:
        raise ValueError(f"{hook.name}: head {max(heads)} out of range; the layer has {z.shape[2]} heads")
    z = z.clone()
    z[:, :, list(heads)] = values.to(device=z.device, dtype=z.dtype)
    return z


def zero_kv_heads(kv: KVHeadActs, hook: HookPoint, *, groups: tuple[int, ...]) -> KVHeadActs:
    """Zero the keys or values of KV heads ``groups`` (under GQA, shared by a group of query heads)."""
    if max(groups) >= kv.shape[2]:
        raise ValueError(f"{hook.name}: KV head {max(groups)} out of range; the layer has {kv.shape[2]}")
    kv = kv.clone()
    kv[:, :, list(groups)] = 0.0
    return kv


def replace_o_proj(out: Resid, hook: HookPoint, *, weight: OProjWeight, stash: dict[str, Tensor]) -> Resid:
    """Recompute the o_proj output from the stashed ``z`` with ``weight`` in place of W_O."""
    z = stash.pop("z")
    return F.linear(z.flatten(-2), weight.to(device=z.device, dtype=z.dtype))


def stash_z(z: HeadActs, hook: HookPoint, *, stash: dict[str, Tensor]) -> None:
    """Remember the o_proj input of this forward for :func:`replace_o_proj`."""
    stash["z"] = z


def partial(fn: HookFn, **kwargs: Any) -> HookFn:
    """``functools.partial`` that keeps a readable name in TransformerLens hook listings."""

    def hook(tensor: Tensor, hook: HookPoint) -> Tensor | None:
        return fn(tensor, hook, **kwargs)

    shown = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k not in ("stash", "weight", "values"))
    hook.__name__ = f"{fn.__name__}({shown})"
    return hook
