"""Interventions as typed TransformerLens hook functions, each equal to a weight edit.

An :class:`Intervention` is a small immutable value: a stable string id (``skip:L12``,
``head:L35H7``, ``group:L35G1``, ``o_proj:L12``), what it touches (kind, layer, index) and a
tuple of ``(hook_name, fn)`` pairs usable with ``model.run_with_hooks(fwd_hooks=...)`` and
``model.hooks(fwd_hooks=...)``. The hooks never modify the model's weights; the test suite
proves each one equal to the corresponding surgery on a Hugging Face copy of the model:

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
patch_o_proj         attn_out := z @ W'^T                       o_proj := W'
==================  =========================================  ==============================
"""

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from depthprobe.models import ModelDims, model_dims
from depthprobe.types import HeadActs, KVHeadActs, OProjWeight, Resid

__all__ = [
    "Intervention",
    "ablate",
    "collect_hooks",
    "load_o_proj_weights",
    "o_proj_accumulative",
    "o_proj_per_layer",
    "o_proj_reverse",
    "patch_o_proj",
    "skip_attn",
    "skip_layer",
    "skip_layers",
    "skip_mlp",
    "validate",
    "zero_head",
    "zero_head_weights",
    "zero_kv_group",
]

Kind = Literal["skip", "skip_attn", "skip_mlp", "head", "group", "head_weights", "o_proj"]
HookFn = Callable[..., Tensor | None]


@dataclass(frozen=True)
class Intervention:
    """One edit of the forward pass, as named hooks.

    ``kind`` and ``layer`` (and ``index``: the head or KV group) say what is touched, so
    sweeps can group conditions and validation can name the valid range.
    """

    id: str
    kind: Kind
    layer: int
    index: int | None = None
    hooks: tuple[tuple[str, HookFn], ...] = field(default=(), repr=False, compare=False)

    def __str__(self) -> str:
        return self.id


# ---------------------------------------------------------------------------------------
# Hook functions. Each has the shape of what it sees; typeguard checks them under pytest.


def zero_output(
    out: Resid, hook: HookPoint) -> Resid:
    """Replace a block's attention or MLP output by zeros, so the residual passes unchanged."""
    return torch.zeros_like(out)


def zero_heads(
    z: HeadActs, hook: HookPoint, *, heads: tuple[int, ...]) -> HeadActs:
    """Zero the per-head attention results ``z`` (the o_proj input) of ``heads``."""
    if max(heads) >= z.shape[2]:
        raise ValueError(f"{hook.name}: head {max(heads)} out of range; the layer has {z.shape[2]} heads")
    z = z.clone()
    z[:, :, list(heads)] = 0.0
    return z


def zero_kv_heads(
    kv: KVHeadActs, hook: HookPoint, *, groups: tuple[int, ...]) -> KVHeadActs:
    """Zero the keys or values of KV heads ``groups`` (under GQA, shared by a group of query heads)."""
    if max(groups) >= kv.shape[2]:
        raise ValueError(f"{hook.name}: KV head {max(groups)} out of range; the layer has {kv.shape[2]}")
    kv = kv.clone()
    kv[:, :, list(groups)] = 0.0
    return kv


def replace_o_proj(
    out: Resid, hook: HookPoint, *, weight: OProjWeight, stash: dict[str, Tensor]
) -> Resid:
    """Recompute the o_proj output from the stashed ``z`` with ``weight`` in place of W_O."""
    z = stash.pop("z")
    return F.linear(z.flatten(-2), weight.to(device=z.device, dtype=z.dtype))


def stash_z(
    z: HeadActs, hook: HookPoint, *, stash: dict[str, Tensor]) -> None:
    """Remember the o_proj input of this forward for :func:`replace_o_proj`."""
    stash["z"] = z


# ---------------------------------------------------------------------------------------
# Constructors.


def _check_index(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def _mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def skip_layer(layer: int) -> Intervention:
    """Make decoder layer ``layer`` the identity: resid_post = resid_pre (= deleting the layer)."""
    _check_index("layer", layer)
    return Intervention(
        f"skip:L{layer}", "skip", layer,
        hooks=((_attn_out(layer), zero_output), (_mlp_out(layer), zero_output)),
    )


def skip_layers(*layers: int) -> list[Intervention]:
    """Skip several layers at once (a list composes)."""
    return [skip_layer(layer) for layer in layers]


def skip_attn(layer: int) -> Intervention:
    """Remove the attention sublayer of ``layer`` (its output added to the residual is zero)."""
    _check_index("layer", layer)
    return Intervention(f"skip_attn:L{layer}", "skip_attn", layer, hooks=((_attn_out(layer), zero_output),))


def skip_mlp(layer: int) -> Intervention:
    """Remove the MLP sublayer of ``layer``."""
    _check_index("layer", layer)
    return Intervention(f"skip_mlp:L{layer}", "skip_mlp", layer, hooks=((_mlp_out(layer), zero_output),))


def zero_head(layer: int, head: int) -> Intervention:
    """Zero-ablate query head ``head`` of ``layer``: the true per-head ablation.

    Equal to zeroing that head's o_proj columns; the other heads of its GQA group, which
    share its keys and values, are untouched.
    """
    _check_index("layer", layer)
    _check_index("head", head)
    fn = _partial(zero_heads, heads=(head,))
    return Intervention(f"head:L{layer}H{head}", "head", layer, head, hooks=((f"blocks.{layer}.attn.hook_z", fn),))


def zero_kv_group(layer: int, group: int) -> Intervention:
    """Ablate every query head that reads key/value head ``group`` (heads ``g*r .. g*r+r-1``, r = H / n_kv).

    Implemented by zeroing that KV head's values, which makes each of those heads' output
    exactly zero (equal to zeroing all their o_proj columns).
    """
    _check_index("layer", layer)
    _check_index("group", group)
    fn = _partial(zero_kv_heads, groups=(group,))
    return Intervention(f"group:L{layer}G{group}", "group", layer, group, hooks=((f"blocks.{layer}.attn.hook_v", fn),))


def zero_head_weights(layer: int, head: int, *, group_size: int) -> Intervention:
    """The study's original head pruning: zero q of ``head``, k and v of its KV head, and its o_proj columns.

    Offered only to reproduce published figures. On a GQA model the zeroed values silence
    the whole group (every query head reading that KV head outputs zero), so every head of
    a group scores the same; use :func:`zero_head` for a true per-head ablation. On models
    with q/k/v biases this zeroes the projections' outputs, i.e. weights and biases.
    ``group_size`` is ``n_heads // n_kv_heads`` (``model_dims(model).group_size``).
    """
    _check_index("layer", layer)
    _check_index("head", head)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    group = head // group_size
    prefix = f"blocks.{layer}.attn"
    return Intervention(
        f"head_weights:L{layer}H{head}", "head_weights", layer, head,
        hooks=(
            (f"{prefix}.hook_q", _partial(zero_heads, heads=(head,))),
            (f"{prefix}.hook_k", _partial(zero_kv_heads, groups=(group,))),
            (f"{prefix}.hook_v", _partial(zero_kv_heads, groups=(group,))),
            (f"{prefix}.hook_z", _partial(zero_heads, heads=(head,))),
        ),
    )


def _partial(fn: HookFn, **kwargs: Any) -> HookFn:
    """``functools.partial`` that keeps a readable name in TransformerLens hook listings."""

    def hook(tensor: Tensor, hook: HookPoint) -> Tensor | None:
        return fn(tensor, hook, **kwargs)

    hook.__name__ = f"{fn.__name__}({', '.join(f'{k}={v}' for k, v in kwargs.items() if k != 'stash')})"
    return hook


# ---------------------------------------------------------------------------------------
# o_proj patches between two models.

OProjSource = Union[str, os.PathLike, torch.nn.Module, Tensor]


def _o_proj_param(model: torch.nn.Module, layer: int) -> Tensor:
    """The o_proj weight [d_model, H*d_head] of ``layer`` of a bridge or a Hugging Face model."""
    if hasattr(model, "blocks"):
        return model.blocks[layer].attn.o.original_component.weight
    return model.get_decoder().layers[layer].self_attn.o_proj.weight


def _model_type(model: torch.nn.Module) -> str | None:
    cfg = getattr(model, "original_model", model).config
    return getattr(cfg, "model_type", None)


def load_o_proj_weights(source: OProjSource, layers: Iterable[int]) -> dict[int, Tensor]:
    """Read only the o_proj weights of ``layers`` from a model or a checkpoint directory.

    A directory is read tensor by tensor with safetensors (sharded checkpoints through
    ``model.safetensors.index.json``), so an 8B source is never loaded whole.
    """
    layers = sorted(set(layers))
    if isinstance(source, torch.nn.Module):
        return {layer: _o_proj_param(source, layer).detach() for layer in layers}
    fetch = _checkpoint_files(source)
    index = fetch("model.safetensors.index.json")
    if index is not None:
        import json

        weight_map: dict[str, str] | None = json.loads(index.read_text())["weight_map"]
    elif fetch("model.safetensors") is not None:
        weight_map = None
    else:
        raise ValueError(f"{source} holds no model.safetensors or model.safetensors.index.json")
    from safetensors import safe_open

    out: dict[int, Tensor] = {}
    for layer in layers:
        key = f"model.layers.{layer}.self_attn.o_proj.weight"
        if weight_map is not None and key not in weight_map:
            raise ValueError(f"{source} has no tensor {key}; is it a Llama/Qwen-style checkpoint with that many layers?")
        file = fetch(weight_map[key] if weight_map is not None else "model.safetensors")
        with safe_open(str(file), framework="pt") as f:
            if key not in f.keys():
                raise ValueError(f"{file} has no tensor {key}")
            out[layer] = f.get_tensor(key)
    return out


def _checkpoint_files(source: Union[str, os.PathLike]) -> Callable[[str], Path | None]:
    """A function returning the local path of one file of a checkpoint directory or hub model, or None.

    For a hub id (or alias) only the requested files are fetched — or found in the cache
    when offline — so the shards without the needed tensors are never downloaded.
    """
    path = Path(source)
    if path.is_dir():
        return lambda name: (path / name) if (path / name).is_file() else None
    if str(source).startswith((".", "/", "~")) or not str(source).strip():
        raise ValueError(f"o_proj source {str(source)!r} is not a model or a checkpoint directory")
    from huggingface_hub import hf_hub_download

    from depthprobe.models import ModelNotFoundError, resolve_model

    try:
        repo = resolve_model(str(source))
    except ModelNotFoundError as err:
        raise ValueError(f"o_proj source: {err}") from None
    if Path(repo).is_dir():
        return _checkpoint_files(repo)

    def fetch(name: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception:  # missing file, or offline and not cached: the caller names what it needed
            return None

    return fetch


def _source_model_type(source: OProjSource) -> str | None:
    if isinstance(source, torch.nn.Module):
        return _model_type(source)
    if isinstance(source, Tensor):
        return None
    cfg = _checkpoint_files(source)("config.json")
    if cfg is not None:
        import json

        return json.loads(cfg.read_text()).get("model_type")
    return None


def patch_o_proj(
    layer: int,
    source: OProjSource,
    *,
    target: torch.nn.Module,
    alpha: float = 1.0,
    heads: Sequence[int] | None = None,
) -> Intervention:
    """Delta-patch the o_proj of ``layer``: W_O <- W_O + alpha * (W_O_src - W_O), as a hook.

    ``source`` is a second model (bridge or Hugging Face), a checkpoint directory (only this
    layer's o_proj is read) or the source weight itself. ``target`` is the model the hook
    will run on; its weights are read, never modified. ``heads`` restricts the patch to those
    heads' columns. With ``alpha == 1`` the patched columns are the source's, bit for bit.
    """
    _check_index("layer", layer)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    dims = model_dims(target)
    if layer >= dims.n_layers:
        raise ValueError(f"layer {layer} out of range; the target model has layers 0..{dims.n_layers - 1}")
    src_type, tgt_type = _source_model_type(source), _model_type(target)
    if src_type is not None and tgt_type is not None and src_type != tgt_type:
        raise ValueError(f"o_proj source is a {src_type} model but the target is {tgt_type}; architectures must match")
    w_tgt = _o_proj_param(target, layer).detach()
    w_src = source if isinstance(source, Tensor) else load_o_proj_weights(source, [layer])[layer]
    if tuple(w_src.shape) != tuple(w_tgt.shape):
        raise ValueError(
            f"o_proj of layer {layer}: source shape {tuple(w_src.shape)} differs from target shape {tuple(w_tgt.shape)}"
        )
    w_src = w_src.to(device=w_tgt.device, dtype=w_tgt.dtype)
    cols = slice(None)
    if heads is not None:
        heads = tuple(heads)
        for h in heads:
            _check_index("head", h)
            if h >= dims.n_heads:
                raise ValueError(f"head {h} out of range; layer {layer} has heads 0..{dims.n_heads - 1}")
        cols = torch.cat([torch.arange(h * dims.d_head, (h + 1) * dims.d_head) for h in heads])
    weight = w_tgt.clone()
    weight[:, cols] = w_src[:, cols] if alpha == 1 else w_tgt[:, cols] + alpha * (w_src[:, cols] - w_tgt[:, cols])
    stash: dict[str, Tensor] = {}
    suffix = "" if heads is None else "H" + ",".join(map(str, heads))
    suffix += "" if alpha == 1 else f"@{alpha:g}"
    return Intervention(
        f"o_proj:L{layer}{suffix}", "o_proj", layer,
        hooks=(
            (f"blocks.{layer}.attn.hook_z", _partial(stash_z, stash=stash)),
            (f"blocks.{layer}.attn.o.hook_out", _partial(replace_o_proj, weight=weight, stash=stash)),
        ),
    )


def _o_proj_patches(target: torch.nn.Module, source: OProjSource, layers: Sequence[int], alpha: float) -> dict[int, Intervention]:
    weights: Any = source if isinstance(source, torch.nn.Module) else load_o_proj_weights(source, layers)
    return {
        layer: patch_o_proj(layer, weights if isinstance(weights, torch.nn.Module) else weights[layer],
                            target=target, alpha=alpha)
        for layer in layers
    }


def o_proj_per_layer(target: torch.nn.Module, source: OProjSource, *, alpha: float = 1.0) -> list[list[Intervention]]:
    """Per-layer replacement: condition k patches layer k alone."""
    patches = _o_proj_patches(target, source, range(model_dims(target).n_layers), alpha)
    return [[patches[layer]] for layer in sorted(patches)]


def o_proj_accumulative(target: torch.nn.Module, source: OProjSource, *, alpha: float = 1.0) -> list[list[Intervention]]:
    """Accumulative replacement: condition k patches layers 0..k."""
    patches = _o_proj_patches(target, source, range(model_dims(target).n_layers), alpha)
    return [[patches[j] for j in range(k + 1)] for k in range(len(patches))]


def o_proj_reverse(target: torch.nn.Module, source: OProjSource, *, alpha: float = 1.0) -> list[list[Intervention]]:
    """Reverse (top-down) accumulative replacement: condition k patches layers k..L-1.

    Listed from the last layer alone (k = L-1) down to all layers (k = 0).
    """
    n = model_dims(target).n_layers
    patches = _o_proj_patches(target, source, range(n), alpha)
    return [[patches[j] for j in range(k, n)] for k in reversed(range(n))]


# ---------------------------------------------------------------------------------------
# Applying interventions.

Interventions = Union[Intervention, Iterable[Any]]


def _flatten(items: Iterable[Any]) -> Iterator[Intervention]:
    for item in items:
        if isinstance(item, Intervention):
            yield item
        elif isinstance(item, Iterable) and not isinstance(item, (str, bytes)):
            yield from _flatten(item)
        else:
            raise TypeError(f"expected an Intervention or a list of them, got {type(item).__name__}")


def validate(dims_or_model: ModelDims | torch.nn.Module, *interventions: Interventions) -> list[Intervention]:
    """Flatten ``interventions`` and check every layer, head and group against the model.

    Raises ``ValueError`` naming the valid range.
    """
    dims = dims_or_model if isinstance(dims_or_model, ModelDims) else model_dims(dims_or_model)
    flat = list(_flatten(interventions))
    for iv in flat:
        if iv.layer >= dims.n_layers:
            raise ValueError(f"{iv.id}: layer {iv.layer} out of range; the model has layers 0..{dims.n_layers - 1}")
        if iv.kind in ("head", "head_weights") and iv.index is not None and iv.index >= dims.n_heads:
            raise ValueError(f"{iv.id}: head {iv.index} out of range; the model has heads 0..{dims.n_heads - 1}")
        if iv.kind == "group" and iv.index is not None and iv.index >= dims.n_kv_heads:
            raise ValueError(
                f"{iv.id}: KV group {iv.index} out of range; the model has groups 0..{dims.n_kv_heads - 1}"
            )
    return flat


def collect_hooks(*interventions: Interventions) -> list[tuple[str, HookFn]]:
    """All hooks of ``interventions`` in an order that composes correctly.

    The o_proj patch observes ``hook_z`` after every other edit of it (so a head ablation
    in the same layer is seen by the patch), hence its stash hooks go last.
    """
    flat = list(_flatten(interventions))
    edits = [h for iv in flat for h in iv.hooks if not h[1].__name__.startswith("stash_z")]
    observers = [h for iv in flat for h in iv.hooks if h[1].__name__.startswith("stash_z")]
    return edits + observers


@contextlib.contextmanager
def ablate(model: torch.nn.Module, *interventions: Interventions) -> Iterator[torch.nn.Module]:
    """Apply ``interventions`` to ``model`` for the duration of the block, then always remove them.

    >>> with ablate(model, skip_layer(3), zero_head(5, 2)):
    ...     logits = model(tokens)
    """
    flat = validate(model, *interventions)
    with model.hooks(fwd_hooks=collect_hooks(flat)):
        yield model
