"""Interventions as weight edits on a plain Hugging Face model that shares the bridge's tensors.

The hook path runs every intervention as TransformerLens hooks on the bridge. For the types
whose weight edit is exact (declared ``exact_weight_edit``: skip a layer = delete it, zero a
head = zero its o_proj columns, zero a KV group = zero its v_proj rows, patch o_proj = put the
patched weight in, ...), the same computation runs on a *plain* Hugging Face model:
:func:`plain_model` builds it once per bridge, on the meta device, and points every parameter
and buffer at the bridge's own tensors (no copy, so an 8B model costs no memory), and
:func:`edited_model` swaps in an edited copy of only the tensors a condition touches (and
removes skipped layers, renumbering the KV-cache indices), restoring everything on exit, even
on error. The bridge itself is never modified.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from depthprobe import adapter
from depthprobe.interventions.base import INTERVENTION_TYPES, Intervention, flatten, model_cache
from depthprobe.models import ModelDims, model_dims

__all__ = [
    "RowEdits",
    "WeightEditor",
    "edited_model",
    "hook_free_allowed",
    "kept_layers",
    "plain_model",
    "require_exact",
]


def _unwrap(module: Any) -> Any:
    """A bridge component's Hugging Face module (the module itself when it is not wrapped)."""
    while getattr(module, "original_component", None) is not None and module is not module.original_component:
        module = module.original_component
    return module


def _resolve(root: torch.nn.Module, path: str) -> Any:
    """The Hugging Face module at ``path`` (``model.layers.0.self_attn.o_proj``) inside a bridge-wrapped tree."""
    module: Any = _unwrap(root)
    for part in filter(None, path.split(".")):
        module = _unwrap(getattr(_unwrap(module), part))
    return module


def _build_plain(model: torch.nn.Module, attn_implementation: str | None) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    hf = adapter.adapter_for(model).hf
    config = copy.deepcopy(hf.config)
    config.output_attentions = False
    impl = attn_implementation or getattr(hf.config, "_attn_implementation", None) or "eager"
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, attn_implementation=impl)
    for name, _ in list(plain.named_parameters(remove_duplicate=False)):
        path, _, attr = name.rpartition(".")
        source = getattr(_resolve(hf, path), attr)
        if not isinstance(source, torch.nn.Parameter):
            source = torch.nn.Parameter(source, requires_grad=False)
        setattr(plain.get_submodule(path), attr, source)
    for name, _ in list(plain.named_buffers(remove_duplicate=False)):
        path, _, attr = name.rpartition(".")
        plain.get_submodule(path)._buffers[attr] = getattr(_resolve(hf, path), attr)
    left = [n for n, t in list(plain.named_parameters()) + list(plain.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"cannot build the plain Hugging Face model: no bridge tensor for {', '.join(left[:3])}")
    plain.generation_config = copy.deepcopy(hf.generation_config)
    plain.eval()
    plain.requires_grad_(False)
    return plain


def plain_model(model: torch.nn.Module, *, attn_implementation: str | None = None) -> torch.nn.Module:
    """The plain Hugging Face model of a bridge: no hook points, every parameter and buffer the bridge's own.

    Built once per (bridge, attention implementation); default attention is the bridge's
    (eager), whose rounding the hook path shares. ``"sdpa"`` is faster and rounds differently.
    """
    return model_cache(model, ("plain_hf", attn_implementation), lambda: _build_plain(model, attn_implementation))


def hook_free_allowed(interventions: Iterable[Any]) -> bool:
    """Whether every intervention of a condition has an exact weight edit (an empty condition does)."""
    return all(type(iv).exact_weight_edit for iv in flatten(interventions))


def require_exact(interventions: Iterable[Any]) -> list[Intervention]:
    """The flattened interventions; a one-line ValueError names any without an exact weight edit."""
    flat = list(flatten(interventions))
    bad = [iv.id for iv in flat if not type(iv).exact_weight_edit]
    if bad:
        ok = sorted(t.kind for t in INTERVENTION_TYPES if t.exact_weight_edit)
        raise ValueError(
            f"{', '.join(bad)} cannot run hook-free (no exact weight edit); kinds that can: {', '.join(ok)}"
        )
    return flat


class WeightEditor:
    """Copy-on-write edits of one layer's tensors of a plain model; nothing changes until :meth:`applied`.

    ``module`` names a submodule of a decoder layer in Hugging Face terms (``self_attn.o_proj``,
    ``self_attn.v_proj``, ``mlp.down_proj``). Row and column ranges edit the weight; rows edit the
    bias too (a zeroed projection output includes its bias), columns leave it.
    """

    def __init__(self, model: torch.nn.Module, plain: torch.nn.Module, dims: ModelDims) -> None:
        self.model = model
        self.plain = plain
        self.dims = dims
        self._layers: torch.nn.ModuleList = plain.model.layers
        self._edits: dict[tuple[int, str, str], tuple[torch.nn.Module, Tensor]] = {}
        self.dropped: set[int] = set()

    def tensor(self, layer: int, module: str, name: str = "weight") -> Tensor | None:
        """The working copy of ``layers[layer].<module>.<name>`` (cloned on first use), or None if absent."""
        key = (layer, module, name)
        if key not in self._edits:
            mod = self._layers[layer].get_submodule(module)
            current = getattr(mod, name, None)
            if current is None:
                return None
            self._edits[key] = (mod, current.detach().clone())
        return self._edits[key][1]

    def zero_rows(self, layer: int, module: str, start: int, stop: int) -> None:
        self.tensor(layer, module)[start:stop] = 0  # type: ignore[index]
        bias = self.tensor(layer, module, "bias")
        if bias is not None:
            bias[start:stop] = 0

    def zero_columns(self, layer: int, module: str, start: int, stop: int) -> None:
        self.tensor(layer, module)[:, start:stop] = 0  # type: ignore[index]

    def zero(self, layer: int, module: str) -> None:
        """Zero the module's output: weight and bias."""
        self.tensor(layer, module).zero_()  # type: ignore[union-attr]
        bias = self.tensor(layer, module, "bias")
        if bias is not None:
            bias.zero_()

    def set(self, layer: int, module: str, weight: Tensor) -> None:
        target = self.tensor(layer, module)
        assert target is not None
        if tuple(weight.shape) != tuple(target.shape):
            raise ValueError(
                f"layer {layer} {module}: replacement shape {tuple(weight.shape)} != {tuple(target.shape)}"
            )
        target.copy_(weight)

    def drop_layer(self, layer: int) -> None:
        self.dropped.add(layer)

    @property
    def first_layer(self) -> int:
        """The first layer this condition changes (the number of layers when it changes none)."""
        return min([layer for layer, _, _ in self._edits] + sorted(self.dropped), default=len(self._layers))

    def linear_edits(self) -> dict[torch.nn.Module, tuple[Tensor, Tensor | None]]:
        """``{linear module: (weight, bias)}`` with this condition's edits, for every edited module."""
        out: dict[torch.nn.Module, tuple[Tensor, Tensor | None]] = {}
        for (_, _, name), (mod, edited) in self._edits.items():
            if not isinstance(mod, torch.nn.Linear):
                raise ValueError(f"row-wise edits support linear modules only, not {type(mod).__name__}")
            weight, bias = out.get(mod, (mod.weight, mod.bias))
            out[mod] = (edited, bias) if name == "weight" else (weight, edited)
        return out

    @contextlib.contextmanager
    def applied(self) -> Iterator[torch.nn.Module]:
        """The plain model with the edits in place and dropped layers removed; restored on exit, even on error."""
        originals = [(mod, name, getattr(mod, name)) for (_, _, name), (mod, _) in self._edits.items()]
        kept = [i for i in range(len(self._layers)) if i not in self.dropped]
        try:
            for (_, _, name), (mod, edited) in self._edits.items():
                setattr(mod, name, torch.nn.Parameter(edited, requires_grad=False))
            with kept_layers(self.plain, kept):
                yield self.plain
        finally:
            for mod, name, original in originals:
                setattr(mod, name, original)


@contextlib.contextmanager
def kept_layers(plain: torch.nn.Module, kept: list[int]) -> Iterator[torch.nn.Module]:
    """The plain model running only the decoder layers ``kept`` (KV-cache indices renumbered); restored on exit."""
    decoder, config = plain.model, plain.config
    full, n_layers = decoder.layers, config.num_hidden_layers
    if kept == list(range(len(full))):
        yield plain
        return
    layer_types = getattr(config, "layer_types", None)
    try:
        decoder.layers = torch.nn.ModuleList([full[i] for i in kept])
        for new, old in enumerate(kept):
            full[old].self_attn.layer_idx = new
        config.num_hidden_layers = len(kept)
        if layer_types is not None:
            config.layer_types = [layer_types[i] for i in kept]
        yield plain
    finally:
        decoder.layers = full
        for i, layer in enumerate(full):
            layer.self_attn.layer_idx = i
        config.num_hidden_layers = n_layers
        if layer_types is not None:
            config.layer_types = layer_types


def _editor(model: torch.nn.Module, plain: torch.nn.Module, dims: ModelDims, condition: Iterable[Any]) -> WeightEditor:
    """The recorded (not yet applied) exact weight edits of one condition."""
    flat = require_exact(condition)
    for iv in flat:
        iv.check(dims)
    editor = WeightEditor(model, plain, dims)
    for iv in sorted(flat, key=lambda iv: type(iv).edit_phase):
        iv.edit_weights(editor)
    return editor


class RowEdits:
    """Row blocks of one batch, each under its own condition's exact weight edits, on the plain model.

    In a batch of ``k * B`` rows, block ``j`` (rows ``j*B .. (j+1)*B``) runs the ``j``-th condition
    of :meth:`applied`: every linear module that condition edits is recomputed on those rows with
    its edited weight and bias, and every layer it removes returns its input on those rows. That
    is the computation of ``edited_model(model, *condition)`` on those rows, with the rest of the
    forward shared by all conditions. Cheap forward hooks on the plain model, none on the bridge.
    """

    def __init__(
        self, model: torch.nn.Module, conditions: Sequence[Iterable[Any]], *, attn_implementation: str | None = None
    ) -> None:
        dims = model_dims(model)
        self.plain = plain_model(model, attn_implementation=attn_implementation)
        self.editors = [_editor(model, self.plain, dims, c) for c in conditions]
        self.n_layers = dims.n_layers

    def first_layer(self, index: int) -> int:
        """The first layer condition ``index`` changes (``n_layers`` for none): layers before it are unablated."""
        return self.editors[index].first_layer

    @contextlib.contextmanager
    def applied(
        self,
        members: Sequence[int] | None = None,
        *,
        start: int = 0,
        start_hidden: Tensor | None = None,
        block_rows: Sequence[Tensor] | None = None,
    ) -> Iterator[torch.nn.Module]:
        """The plain model with block ``j`` of every batch under condition ``members[j]`` (default: all, in order).

        ``start`` > 0 runs layers ``start..`` only (KV-cache index 0 is layer ``start``), with
        ``start_hidden`` (one row, tiled over the batch) as the residual stream entering layer ``start``.
        ``block_rows`` gives the rows of each block (indices into the batch) when the batch is not
        ``k`` equal contiguous blocks (a batch whose ended rows were dropped).
        """
        members = list(range(len(self.editors))) if members is None else list(members)
        if block_rows is not None and len(block_rows) != len(members):
            raise ValueError(f"block_rows names {len(block_rows)} blocks; there are {len(members)} conditions")
        layout = _Layout(len(members), block_rows)
        if start and start_hidden is None:
            raise ValueError("start > 0 needs start_hidden, the residual stream entering that layer")
        linear: dict[torch.nn.Module, list[tuple[int, Tensor, Tensor | None]]] = {}
        dropped: dict[int, list[int]] = {}
        for j, index in enumerate(members):
            editor = self.editors[index]
            for mod, (weight, bias) in editor.linear_edits().items():
                linear.setdefault(mod, []).append((j, weight, bias))
            for layer in editor.dropped:
                dropped.setdefault(layer, []).append(j)
        layers = self.plain.model.layers
        handles = []
        try:
            for mod, entries in linear.items():
                handles.append(mod.register_forward_hook(_linear_rows(entries, layout)))
            for layer, blocks in dropped.items():
                if layer >= start:
                    handles.append(layers[layer].register_forward_hook(_identity_rows(blocks, layout)))
            if start:
                handles.append(layers[start].register_forward_pre_hook(_set_input(start_hidden)))  # type: ignore[arg-type]
            with kept_layers(self.plain, list(range(start, self.n_layers))):
                yield self.plain
        finally:
            for handle in handles:
                handle.remove()


class _Layout:
    """The rows of block ``j`` in a batch: ``k`` equal contiguous blocks, or ``block_rows[j]``."""

    def __init__(self, k: int, block_rows: Sequence[Tensor] | None) -> None:
        self.k, self.block_rows = k, block_rows

    def rows(self, j: int, batch: int) -> slice | Tensor | None:
        """Block ``j``'s rows of a batch of ``batch`` rows (None: it has none left)."""
        if self.block_rows is None:
            if batch % self.k:
                raise ValueError(f"a batch of {batch} rows cannot hold {self.k} equal row blocks")
            b = batch // self.k
            return slice(j * b, (j + 1) * b)
        index = self.block_rows[j]
        return index if index.numel() else None


def _linear_rows(entries: list[tuple[int, Tensor, Tensor | None]], layout: _Layout) -> Any:
    def hook(module: torch.nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
        x = args[0]
        for j, weight, bias in entries:
            rows = layout.rows(j, x.shape[0])
            if rows is not None:
                out[rows] = torch.nn.functional.linear(x[rows], weight, bias)
        return out

    return hook


def _identity_rows(blocks: list[int], layout: _Layout) -> Any:
    def hook(module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if not isinstance(out, Tensor):
            raise TypeError(
                f"row-wise layer removal expects a decoder layer returning a tensor, got {type(out).__name__}"
            )
        hidden = args[0]
        for j in blocks:
            rows = layout.rows(j, hidden.shape[0])
            if rows is not None:
                out[rows] = hidden[rows]
        return out

    return hook


def _set_input(hidden: Tensor) -> Any:
    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if hidden.shape[1:] != x.shape[1:]:
            raise ValueError(f"start_hidden has shape {tuple(hidden.shape)}; the layer input is {tuple(x.shape)}")
        return (hidden.to(x.dtype).repeat(x.shape[0] // hidden.shape[0], *[1] * (x.dim() - 1)), *args[1:])

    return hook


@contextlib.contextmanager
def edited_model(
    model: torch.nn.Module, *interventions: Any, attn_implementation: str | None = None
) -> Iterator[torch.nn.Module]:
    """The plain Hugging Face model of ``model`` with the exact weight edits of ``interventions`` in place.

    Only the touched tensors are copied; on exit (normal or not) the plain model is restored.
    ``with edited_model(bridge, zero_head(3, 1)) as hf: hf(ids).logits`` equals the hook path.
    """
    plain = plain_model(model, attn_implementation=attn_implementation)
    with _editor(model, plain, model_dims(model), interventions).applied() as edited:
        yield edited
