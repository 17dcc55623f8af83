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
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from depthprobe import adapter
from depthprobe.interventions.base import Intervention, flatten, model_cache
from depthprobe.models import ModelDims, model_dims

__all__ = ["WeightEditor", "edited_model", "hook_free_allowed", "plain_model", "require_exact"]


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
        from depthprobe.interventions.base import INTERVENTION_TYPES

        ok = sorted(t.kind for t in INTERVENTION_TYPES if t.exact_weight_edit)
        raise ValueError(f"{', '.join(bad)} cannot run hook-free (no exact weight edit); kinds that can: "
                         f"{', '.join(ok)}")
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
            raise ValueError(f"layer {layer} {module}: replacement shape {tuple(weight.shape)} != {tuple(target.shape)}")
        target.copy_(weight)

    def drop_layer(self, layer: int) -> None:
        self.dropped.add(layer)

    @contextlib.contextmanager
    def applied(self) -> Iterator[torch.nn.Module]:
        """The plain model with the edits in place and dropped layers removed; restored on exit, even on error."""
        plain, decoder = self.plain, self.plain.model
        config = plain.config
        full, n_layers = decoder.layers, config.num_hidden_layers
        layer_types = getattr(config, "layer_types", None)
        originals = [(mod, name, getattr(mod, name)) for (_, _, name), (mod, _) in self._edits.items()]
        kept = [i for i in range(len(full)) if i not in self.dropped]
        try:
            for (_, _, name), (mod, edited) in self._edits.items():
                setattr(mod, name, torch.nn.Parameter(edited, requires_grad=False))
            if self.dropped:
                decoder.layers = torch.nn.ModuleList([full[i] for i in kept])
                for new, old in enumerate(kept):
                    full[old].self_attn.layer_idx = new
                config.num_hidden_layers = len(kept)
                if layer_types is not None:
                    config.layer_types = [layer_types[i] for i in kept]
            yield plain
        finally:
            for mod, name, original in originals:
                setattr(mod, name, original)
            decoder.layers = full
            for i, layer in enumerate(full):
                layer.self_attn.layer_idx = i
            config.num_hidden_layers = n_layers
            if layer_types is not None:
                config.layer_types = layer_types


@contextlib.contextmanager
def edited_model(model: torch.nn.Module, *interventions: Any,
                 attn_implementation: str | None = None) -> Iterator[torch.nn.Module]:
    """The plain Hugging Face model of ``model`` with the exact weight edits of ``interventions`` in place.

    Only the touched tensors are copied; on exit (normal or not) the plain model is restored.
    ``with edited_model(bridge, zero_head(3, 1)) as hf: hf(ids).logits`` equals the hook path.
    """
    flat = require_exact(interventions)
    dims = model_dims(model)
    for iv in flat:
        iv.check(dims)
    plain = plain_model(model, attn_implementation=attn_implementation)
    editor = WeightEditor(model, plain, dims)
    for iv in sorted(flat, key=lambda iv: type(iv).edit_phase):
        iv.edit_weights(editor)
    with editor.applied() as edited:
        yield edited
