"""o_proj delta patches between two models, and the study's per-layer, accumulative and reverse schedules.

``patch_o_proj(layer, source)`` is a value: the layer, a *reference* to the source weights
(:class:`OProjSource`: a checkpoint directory, a hub id or alias, or a tensor with its digest),
``alpha`` and ``heads``. Binding it to a model reads only that layer's o_proj from the source
(safetensors, tensor by tensor, so an 8B source is never loaded whole), checks architecture and
shape against the model, and builds the patched weight once per model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import torch
from torch import Tensor

from depthprobe import adapter
from depthprobe.interventions.base import Bound, Intervention, check_index, model_cache, register
from depthprobe.interventions.hooks import partial, replace_o_proj, stash_z
from depthprobe.models import ModelDims, ModelNotFoundError, model_dims, resolve_model

__all__ = [
    "OProjSource",
    "PatchOProj",
    "load_o_proj_weights",
    "o_proj_accumulative",
    "o_proj_per_layer",
    "o_proj_reverse",
    "patch_o_proj",
]

SourceLike = Union[str, os.PathLike, torch.nn.Module, Tensor, "OProjSource"]


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


def load_o_proj_weights(source: Union[str, os.PathLike, torch.nn.Module], layers: Iterable[int]) -> dict[int, Tensor]:
    """Read only the o_proj weights of ``layers`` from a model or a checkpoint directory.

    A directory is read tensor by tensor with safetensors (sharded checkpoints through
    ``model.safetensors.index.json``), so an 8B source is never loaded whole.
    """
    layers = sorted(set(layers))
    if isinstance(source, torch.nn.Module):
        return {layer: adapter.o_proj_weight(source, layer).detach() for layer in layers}
    fetch = _checkpoint_files(source)
    index = fetch("model.safetensors.index.json")
    if index is not None:
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
            raise ValueError(
                f"{source} has no tensor {key}; is it a Llama/Qwen-style checkpoint with that many layers?"
            )
        file = fetch(weight_map[key] if weight_map is not None else "model.safetensors")
        with safe_open(str(file), framework="pt") as f:
            if key not in f.keys():
                raise ValueError(f"{file} has no tensor {key}")
            out[layer] = f.get_tensor(key)
    return out


def tensor_digest(t: Tensor) -> str:
    """``sha256:<hex>`` of a tensor's dtype, shape and bytes: its identity across processes."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class OProjSource:
    """Where source o_proj weights come from: ``type`` ``"path"`` (a checkpoint directory),
    ``"hub"`` (a hub id or alias) or ``"tensor"`` (the weight itself; ``ref`` is its digest).

    Equal references compare equal in any process; a tensor source compares by digest.
    ``model_type`` (optional) is the source's architecture, checked against the target's.
    """

    type: Literal["path", "hub", "tensor"]
    ref: str
    tensor: Tensor | None = field(default=None, compare=False, repr=False)
    model_type: str | None = field(default=None, compare=False)

    @staticmethod
    def of(source: SourceLike, layer: int) -> OProjSource:
        """A reference to ``source``: a directory, hub id or alias, a tensor, or a model (its ``layer`` is read now)."""
        if isinstance(source, OProjSource):
            return source
        if isinstance(source, Tensor):
            return OProjSource("tensor", tensor_digest(source), source.detach())
        if isinstance(source, torch.nn.Module):
            w = adapter.o_proj_weight(source, layer).detach()
            return OProjSource("tensor", tensor_digest(w), w, adapter.model_type(source))
        if isinstance(source, (str, os.PathLike)):
            path = Path(source).expanduser()
            if path.is_dir():
                return OProjSource("path", str(path.resolve()))
            if str(source).startswith((".", "/", "~")) or not str(source).strip():
                raise ValueError(f"o_proj source {str(source)!r} is not a model or a checkpoint directory")
            return OProjSource("hub", str(source))
        raise ValueError(
            f"o_proj source must be a checkpoint directory, hub id, model or tensor; got {type(source).__name__}"
        )

    def weight(self, layer: int) -> Tensor:
        """The source's o_proj weight of ``layer`` (read from disk or the hub for path and hub sources)."""
        if self.type == "tensor":
            assert self.tensor is not None
            return self.tensor
        return load_o_proj_weights(self.ref, [layer])[layer]

    def source_model_type(self) -> str | None:
        if self.type == "tensor":
            return self.model_type
        cfg = _checkpoint_files(self.ref)("config.json")
        return json.loads(cfg.read_text()).get("model_type") if cfg is not None else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe; a tensor source embeds its data (safetensors bytes, base64): prefer path or hub sources for big models."""
        out: dict[str, Any] = {"type": self.type, "ref": self.ref}
        if self.model_type is not None:
            out["model_type"] = self.model_type
        if self.type == "tensor":
            from safetensors.torch import save

            assert self.tensor is not None
            out["data"] = base64.b64encode(save({"w": self.tensor.detach().to("cpu").contiguous()})).decode()
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> OProjSource:
        kind = data.get("type")
        if kind not in ("path", "hub", "tensor"):
            raise ValueError(f"o_proj source type {kind!r} unknown; valid: path, hub, tensor")
        if kind != "tensor":
            return OProjSource(kind, str(data["ref"]), model_type=data.get("model_type"))
        if "data" not in data:
            raise ValueError("a tensor o_proj source needs its 'data'")
        from safetensors.torch import load

        tensor = load(base64.b64decode(data["data"]))["w"]
        digest = tensor_digest(tensor)
        if digest != data["ref"]:
            raise ValueError(f"tensor o_proj source: data digest {digest} differs from its ref {data['ref']}")
        return OProjSource("tensor", digest, tensor, data.get("model_type"))


@register
@dataclass(frozen=True)
class PatchOProj(Intervention):
    """W_O of ``layer`` <- W_O + alpha (W_O_src - W_O), on the columns of ``heads`` (all when None)."""

    source: OProjSource
    alpha: float = 1.0
    heads: tuple[int, ...] | None = None

    kind = "o_proj"
    stateful = True
    binds_to_model = True
    weight_edit = "o_proj := W + alpha (W_src - W) on the patched heads' columns"
    exact_weight_edit = True
    edit_phase = 0  # the hook multiplies the already edited z by the patched weight: replace first, zero after

    def edit_weights(self, editor: Any) -> None:
        model, dims = editor.model, editor.dims
        weight = model_cache(model, ("o_proj", self), lambda: self.patched_weight(model, dims))
        editor.set(self.layer, "self_attn.o_proj", weight)

    def __post_init__(self) -> None:
        super().__post_init__()
        alpha = self.alpha
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        if self.heads is not None:
            for h in self.heads:
                check_index("head", h)

    @property
    def id(self) -> str:
        suffix = "" if self.heads is None else "H" + ",".join(map(str, self.heads))
        suffix += "" if self.alpha == 1 else f"@{self.alpha:g}"
        return f"o_proj:L{self.layer}{suffix}"

    def touched_heads(self, dims: ModelDims) -> tuple[int, ...]:
        return tuple(range(dims.n_heads)) if self.heads is None else tuple(sorted(set(self.heads)))

    def check(self, dims: ModelDims) -> None:
        if self.layer >= dims.n_layers:
            raise ValueError(
                f"{self.id}: layer {self.layer} out of range; the target model has layers 0..{dims.n_layers - 1}"
            )
        for h in self.heads or ():
            if h >= dims.n_heads:
                raise ValueError(
                    f"{self.id}: head {h} out of range; layer {self.layer} has heads 0..{dims.n_heads - 1}"
                )

    def patched_weight(self, model: torch.nn.Module, dims: ModelDims) -> Tensor:
        """The o_proj weight this patch puts in place of the model's (the model's own is not modified)."""
        src_type, tgt_type = self.source.source_model_type(), adapter.model_type(model)
        if src_type is not None and tgt_type is not None and src_type != tgt_type:
            raise ValueError(
                f"o_proj source is a {src_type} model but the target is {tgt_type}; architectures must match"
            )
        w_tgt = adapter.o_proj_weight(model, self.layer).detach()
        w_src = self.source.weight(self.layer)
        if tuple(w_src.shape) != tuple(w_tgt.shape):
            raise ValueError(
                f"o_proj of layer {self.layer}: source shape {tuple(w_src.shape)} differs from "
                f"target shape {tuple(w_tgt.shape)}"
            )
        w_src = w_src.to(device=w_tgt.device, dtype=w_tgt.dtype)
        cols: Any = slice(None)
        if self.heads is not None:
            cols = torch.cat([torch.arange(h * dims.d_head, (h + 1) * dims.d_head) for h in self.heads])
        weight = w_tgt.clone()
        a = self.alpha
        weight[:, cols] = w_src[:, cols] if a == 1 else w_tgt[:, cols] + a * (w_src[:, cols] - w_tgt[:, cols])
        return weight

    def _make_hooks(self, model: torch.nn.Module, dims: ModelDims) -> Bound:
        weight = model_cache(model, ("o_proj", self), lambda: self.patched_weight(model, dims))
        stash: dict[str, Tensor] = {}
        return Bound(
            self,
            edits=((f"blocks.{self.layer}.attn.o.hook_out", partial(replace_o_proj, weight=weight, stash=stash)),),
            observers=((f"blocks.{self.layer}.attn.hook_z", partial(stash_z, stash=stash)),),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "source": self.source.to_dict(),
            "alpha": float(self.alpha),
            "heads": None if self.heads is None else list(self.heads),
        }

    @classmethod
    def _from_fields(cls, fields: dict[str, Any]) -> Intervention:
        fields = dict(fields)
        heads = fields.pop("heads", None)
        source = fields.pop("source")
        return cls(
            fields.pop("layer"),
            OProjSource.from_dict(source) if isinstance(source, dict) else source,
            float(fields.pop("alpha", 1.0)),
            None if heads is None else tuple(int(h) for h in heads),
        )

    @classmethod
    def _from_id_rest(cls, rest: str) -> Intervention:
        raise ValueError(
            f"o_proj:{rest} names no source: rebuild it with Intervention.from_dict(iv.to_dict()) "
            f"or patch_o_proj(layer, source)"
        )


def patch_o_proj(
    layer: int,
    source: SourceLike,
    *,
    alpha: float = 1.0,
    heads: Sequence[int] | None = None,
    target: torch.nn.Module | None = None,
) -> Intervention:
    """Delta-patch the o_proj of ``layer``: W_O <- W_O + alpha * (W_O_src - W_O), as a hook.

    ``source`` is a checkpoint directory or hub id/alias (only this layer's o_proj is read, at
    bind time), a second model (its o_proj of ``layer`` is taken now, as a tensor with its
    digest) or the source weight itself. ``heads`` restricts the patch to those heads' columns.
    With ``alpha == 1`` the patched columns are the source's, bit for bit. The target's weights
    are read when the patch is bound to the model it runs on, never modified. ``target=``
    (optional, for backward compatibility) binds once right away, so a mismatch is reported here.
    """
    check_index("layer", layer)
    if isinstance(alpha, int) and not isinstance(alpha, bool):
        alpha = float(alpha)
    iv = PatchOProj(layer, OProjSource.of(source, layer), alpha, None if heads is None else tuple(heads))
    if target is not None:
        iv.bind(target)
    return iv


def _n_layers(target: torch.nn.Module | ModelDims) -> int:
    return (target if isinstance(target, ModelDims) else model_dims(target)).n_layers


def _patches(target: torch.nn.Module | ModelDims, source: SourceLike, alpha: float) -> list[Intervention]:
    return [patch_o_proj(layer, source, alpha=alpha) for layer in range(_n_layers(target))]


def o_proj_per_layer(
    target: torch.nn.Module | ModelDims, source: SourceLike, *, alpha: float = 1.0
) -> list[list[Intervention]]:
    """Per-layer replacement: condition k patches layer k alone."""
    return [[p] for p in _patches(target, source, alpha)]


def o_proj_accumulative(
    target: torch.nn.Module | ModelDims, source: SourceLike, *, alpha: float = 1.0
) -> list[list[Intervention]]:
    """Accumulative replacement: condition k patches layers 0..k."""
    patches = _patches(target, source, alpha)
    return [patches[: k + 1] for k in range(len(patches))]


def o_proj_reverse(
    target: torch.nn.Module | ModelDims, source: SourceLike, *, alpha: float = 1.0
) -> list[list[Intervention]]:
    """Reverse (top-down) accumulative replacement: condition k patches layers k..L-1.

    Listed from the last layer alone (k = L-1) down to all layers (k = 0).
    """
    patches = _patches(target, source, alpha)
    n = len(patches)
    return [patches[k:] for k in reversed(range(n))]
