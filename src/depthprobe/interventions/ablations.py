"""Zero ablations: layers, sublayers, query heads, GQA groups, and the study's weight zeroing.

==================  =========================================  ==============================
constructor          hook                                       equal weight edit
==================  =========================================  ==============================
skip_layer           attn_out := 0 and mlp_out := 0             delete the decoder layer
skip_attn            attn_out := 0                              zero o_proj
skip_mlp             mlp_out := 0                               zero down_proj
zero_head            z[:, :, h] := 0                            zero o_proj columns of head h
zero_kv_group        v[:, :, g] := 0                            zero o_proj columns of every
                                                                query head reading KV head g
zero_head_weights    q[h], k[g], v[g], z[h] := 0                the study's original pruning
==================  =========================================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from depthprobe.interventions.base import Bound, Intervention, OneHead, check_index, register
from depthprobe.interventions.hooks import partial, zero_heads, zero_kv_heads, zero_output
from depthprobe.models import ModelDims

__all__ = [
    "SkipAttn",
    "SkipLayer",
    "SkipMLP",
    "ZeroHead",
    "ZeroHeadWeights",
    "ZeroKVGroup",
    "skip_attn",
    "skip_layer",
    "skip_layers",
    "skip_mlp",
    "zero_head",
    "zero_head_weights",
    "zero_kv_group",
]


def _attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def _mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


@register
@dataclass(frozen=True)
class SkipLayer(Intervention):
    """Decoder layer ``layer`` as the identity: resid_post = resid_pre."""

    kind = "skip"
    identity_block = True
    weight_edit = "delete the decoder layer"
    exact_weight_edit = True

    def edit_weights(self, editor: Any) -> None:
        editor.drop_layer(self.layer)

    def _make_hooks(self, model: Any, dims: Any) -> Bound:
        return Bound(self, ((_attn_out(self.layer), zero_output), (_mlp_out(self.layer), zero_output)))


@register
@dataclass(frozen=True)
class SkipAttn(Intervention):
    """The attention sublayer of ``layer`` removed (its output added to the residual is zero)."""

    kind = "skip_attn"
    weight_edit = "zero o_proj"
    exact_weight_edit = True

    def edit_weights(self, editor: Any) -> None:
        editor.zero(self.layer, "self_attn.o_proj")

    def _make_hooks(self, model: Any, dims: Any) -> Bound:
        return Bound(self, ((_attn_out(self.layer), zero_output),))


@register
@dataclass(frozen=True)
class SkipMLP(Intervention):
    """The MLP sublayer of ``layer`` removed."""

    kind = "skip_mlp"
    weight_edit = "zero down_proj"
    exact_weight_edit = True

    def edit_weights(self, editor: Any) -> None:
        editor.zero(self.layer, "mlp.down_proj")

    def touched_heads(self, dims: ModelDims) -> tuple[int, ...]:
        return ()

    def _make_hooks(self, model: Any, dims: Any) -> Bound:
        return Bound(self, ((_mlp_out(self.layer), zero_output),))


@register
@dataclass(frozen=True)
class ZeroHead(OneHead):
    """Query head ``head`` of ``layer`` zero-ablated (its ``hook_z`` slice := 0)."""

    kind = "head"
    grid = "heads"
    weight_edit = "zero the o_proj columns of the head"
    exact_weight_edit = True

    def edit_weights(self, editor: Any) -> None:
        d = editor.dims.d_head
        editor.zero_columns(self.layer, "self_attn.o_proj", self.head * d, (self.head + 1) * d)

    @property
    def id(self) -> str:
        return f"head:L{self.layer}H{self.head}"

    def _make_hooks(self, model: Any, dims: Any) -> Bound:
        return Bound(self, ((f"blocks.{self.layer}.attn.hook_z", partial(zero_heads, heads=(self.head,))),))


@register
@dataclass(frozen=True)
class ZeroKVGroup(Intervention):
    """Every query head reading KV head ``group`` of ``layer`` ablated (its values := 0)."""

    group: int
    kind = "group"
    unit = "group"
    grid = "groups"
    weight_edit = "zero the o_proj columns of every query head reading the KV head"
    exact_weight_edit = True

    def edit_weights(self, editor: Any) -> None:
        # zeroed values make every head of the group output exactly zero, as the hook does
        d = editor.dims.d_head
        editor.zero_rows(self.layer, "self_attn.v_proj", self.group * d, (self.group + 1) * d)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_index("group", self.group)

    @property
    def index(self) -> int | None:
        return self.group

    @property
    def id(self) -> str:
        return f"group:L{self.layer}G{self.group}"

    def touched_heads(self, dims: ModelDims) -> tuple[int, ...]:
        r = dims.group_size
        return tuple(range(self.group * r, (self.group + 1) * r))

    def _make_hooks(self, model: Any, dims: Any) -> Bound:
        return Bound(self, ((f"blocks.{self.layer}.attn.hook_v", partial(zero_kv_heads, groups=(self.group,))),))


@register
@dataclass(frozen=True)
class ZeroHeadWeights(OneHead):
    """The study's original head pruning: q of ``head``, k and v of its KV head, and its o_proj columns zeroed.

    Under GQA the zeroed values silence the head's whole group, so the declared ``heads`` are
    the group's. The group is read from the model at bind time.
    """

    kind = "head_weights"
    grid = "head_weights"
    binds_to_model = True
    weight_edit = "zero q_proj rows of the head, k_proj and v_proj rows of its KV head, o_proj columns of the head"
    exact_weight_edit = True

    def edit_weights(self, editor: Any) -> None:
        d, h = editor.dims.d_head, self.head
        g = h // editor.dims.group_size
        editor.zero_rows(self.layer, "self_attn.q_proj", h * d, (h + 1) * d)
        editor.zero_rows(self.layer, "self_attn.k_proj", g * d, (g + 1) * d)
        editor.zero_rows(self.layer, "self_attn.v_proj", g * d, (g + 1) * d)
        editor.zero_columns(self.layer, "self_attn.o_proj", h * d, (h + 1) * d)

    @property
    def id(self) -> str:
        return f"head_weights:L{self.layer}H{self.head}"

    def touched_heads(self, dims: ModelDims) -> tuple[int, ...]:
        g = self.head // dims.group_size
        return tuple(range(g * dims.group_size, (g + 1) * dims.group_size))

    def _make_hooks(self, model: Any, dims: ModelDims) -> Bound:
        group = self.head // dims.group_size
        prefix = f"blocks.{self.layer}.attn"
        return Bound(
            self,
            (
                (f"{prefix}.hook_q", partial(zero_heads, heads=(self.head,))),
                (f"{prefix}.hook_k", partial(zero_kv_heads, groups=(group,))),
                (f"{prefix}.hook_v", partial(zero_kv_heads, groups=(group,))),
                (f"{prefix}.hook_z", partial(zero_heads, heads=(self.head,))),
            ),
        )


# --- constructors ---------------------------------------------------------------------------


def skip_layer(layer: int) -> Intervention:
    """Make decoder layer ``layer`` the identity: resid_post = resid_pre (= deleting the layer)."""
    return SkipLayer(check_index("layer", layer))


def skip_layers(*layers: int) -> list[Intervention]:
    """Skip several layers at once (a list composes)."""
    return [skip_layer(layer) for layer in layers]


def skip_attn(layer: int) -> Intervention:
    """Remove the attention sublayer of ``layer`` (its output added to the residual is zero)."""
    return SkipAttn(check_index("layer", layer))


def skip_mlp(layer: int) -> Intervention:
    """Remove the MLP sublayer of ``layer``."""
    return SkipMLP(check_index("layer", layer))


def zero_head(layer: int, head: int) -> Intervention:
    """Zero-ablate query head ``head`` of ``layer``: the true per-head ablation.

    Equal to zeroing that head's o_proj columns; the other heads of its GQA group, which
    share its keys and values, are untouched.
    """
    return ZeroHead(check_index("layer", layer), check_index("head", head))


def zero_kv_group(layer: int, group: int) -> Intervention:
    """Ablate every query head that reads key/value head ``group`` (heads ``g*r .. g*r+r-1``, r = H / n_kv).

    Implemented by zeroing that KV head's values, which makes each of those heads' output
    exactly zero (equal to zeroing all their o_proj columns).
    """
    return ZeroKVGroup(check_index("layer", layer), check_index("group", group))


def zero_head_weights(layer: int, head: int, *, group_size: int | None = None) -> Intervention:
    """The study's original head pruning: zero q of ``head``, k and v of its KV head, and its o_proj columns.

    Offered only to reproduce published figures. On a GQA model the zeroed values silence
    the whole group (every query head reading that KV head outputs zero), so every head of
    a group scores the same; use :func:`zero_head` for a true per-head ablation. On models
    with q/k/v biases this zeroes the projections' outputs, i.e. weights and biases.
    The KV head is found from the model the value is bound to; ``group_size`` is accepted for
    backward compatibility, checked to be a positive int, and not needed.
    """
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    return ZeroHeadWeights(check_index("layer", layer), check_index("head", head))
