"""Models by description: a picklable :class:`ModelSpec` that ``load_model`` accepts and workers load themselves.

A sweep on many GPUs or nodes must not ship a loaded model: every worker loads its own copy
from a name or path. A ``ModelSpec`` is that description (name or path, dtype, device and
``boot_transformers`` options), a frozen value that pickles to a few hundred bytes. The driver
reads from it, without loading any weights, what a run manifest needs (the model's identity:
name, revision or weights fingerprint, dtype, device kind) and what grids and checks need (the
layer and head counts, from ``config.json``). Workers load it with :func:`load_model` and check
that what they loaded has the same identity (:func:`~depthprobe.identity.spec_identity_mismatch`),
so a node with other weights under the same path is refused, never mixed into a run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from transformers import AutoConfig

from depthprobe.identity import checkpoint_identity, model_identity
from depthprobe.models import ModelDims, as_dtype, default_device, load_model, resolve_model

__all__ = ["ModelSpec", "as_model_spec"]


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        return str(dtype).replace("torch.", "")
    return str(dtype)


@dataclass(frozen=True)
class ModelSpec:
    """A model described, not loaded: ``ModelSpec("organism-base", dtype="float32", device="cpu")``.

    ``name_or_path`` is anything :func:`~depthprobe.models.load_model` accepts (alias, local
    directory, hub id); ``dtype`` and ``device`` default as ``load_model`` does (bfloat16 on GPU,
    float32 on CPU, the GPU when there is one); ``load_options`` go to ``boot_transformers``.
    """

    name_or_path: str
    dtype: str | None = None
    device: str | None = None
    load_options: tuple[tuple[str, Any], ...] = field(default=())

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        *,
        dtype: torch.dtype | str | None = None,
        device: str | None = None,
        **load_options: Any,
    ) -> None:
        if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
            raise ValueError(f"ModelSpec needs a model name or path (str), got {name_or_path!r}")
        if device is not None and not isinstance(device, str):
            raise ValueError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:1', got {device!r}")
        object.__setattr__(self, "name_or_path", str(name_or_path))
        object.__setattr__(self, "dtype", _dtype_name(dtype))
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "load_options", tuple(sorted(load_options.items())))
        if self.dtype is not None:
            as_dtype(self.dtype, device or "cpu")  # a one-line ValueError naming the valid dtypes

    # dataclass(frozen) with a custom __init__: pickling goes through __reduce__ so the checks re-run.
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.name_or_path, self.dtype, self.device, self.load_options))

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with ``dtype``, ``device`` or ``name_or_path`` changed."""
        kw = {"dtype": self.dtype, "device": self.device, **dict(self.load_options)}
        name = changes.pop("name_or_path", self.name_or_path)
        kw.update(changes)
        return ModelSpec(name, **kw)

    # --- what the driver reads without loading weights ------------------------------------
    @property
    def source(self) -> str:
        """What ``boot_transformers`` loads: a local directory or a hub id (aliases resolved)."""
        return resolve_model(self.name_or_path)

    def for_executor(self, executor: Any) -> ModelSpec:
        """This spec with its device fixed where the executor's workers run (``executor.worker_device()``,
        e.g. ``"cuda"`` for GPU workers), or where this process would load it; the manifest and every
        worker then agree on it."""
        if self.device is not None:
            return self
        pick = getattr(executor, "worker_device", None)
        return self.replace(device=pick() if callable(pick) else self.resolved_device())

    def resolved_device(self) -> str:
        """The device this spec loads on here (``device``, else the GPU when this process sees one)."""
        return self.device or default_device()

    @cached_property
    def config(self) -> Any:
        """The Hugging Face config (``config.json`` only; no weights are read)."""
        return AutoConfig.from_pretrained(self.source)

    def dims(self) -> ModelDims:
        """Layer and head counts (:class:`~depthprobe.models.ModelDims`), equal to ``model_dims(load_model(spec))``."""
        cfg = getattr(self.config, "text_config", None) or self.config
        n_heads = int(cfg.num_attention_heads)
        n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
        d_model = int(cfg.hidden_size)
        d_head = int(getattr(cfg, "head_dim", None) or d_model // n_heads)
        return ModelDims(
            n_layers=int(cfg.num_hidden_layers), n_heads=n_heads, n_kv_heads=n_kv, d_head=d_head, d_model=d_model
        )

    def identity(self) -> dict[str, Any]:
        """What a run manifest records about the model, equal to ``model_identity(load_model(spec))``
        (:func:`~depthprobe.identity.checkpoint_identity`: read from config and weight files, weights as loaded)."""
        device = self.resolved_device()
        return checkpoint_identity(self.config, self.source, as_dtype(self.dtype, device), device)

    # --- what workers do ------------------------------------------------------------------
    def load(self) -> Any:
        """Load the model (a ``TransformerBridge``), exactly as ``load_model(spec)``."""
        return load_model(self.name_or_path, dtype=self.dtype, device=self.device, **dict(self.load_options))

    def __str__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in (("dtype", self.dtype), ("device", self.device)) if v)
        return f"ModelSpec({self.name_or_path!r}{extra})"


def _rebuild(name: str, dtype: str | None, device: str | None, load_options: tuple[tuple[str, Any], ...]) -> ModelSpec:
    return ModelSpec(name, dtype=dtype, device=device, **dict(load_options))


def as_model_spec(model: Any) -> ModelSpec:
    """``model`` itself if it is a spec; else the spec that reloads a loaded model (its path or hub id,
    dtype and device), for executors whose workers load their own copy. A model whose weights differ
    in memory from those ``load_model`` loaded is refused: workers could only load the checkpoint's."""
    if isinstance(model, ModelSpec):
        return model
    ident = model_identity(model)
    name = ident["name"]
    if not name or name == "None" or not (os.path.isdir(name) or name.count("/") == 1):
        raise ValueError(
            f"cannot describe this model for remote workers (its name is {name!r}); "
            f"pass depthprobe.ModelSpec(name_or_path, dtype=..., device=...) instead of a loaded model"
        )
    if ident["weights"] is not None:
        raise ValueError(
            f"cannot describe this model for remote workers: its weights changed in memory after "
            f"load_model loaded {name} (weights={ident['weights']!r}) and workers load the checkpoint; "
            f"run this sweep without an executor, or reload the model"
        )
    param = next(model.parameters())
    device = str(param.device) if param.device.type != "cpu" else "cpu"
    return ModelSpec(name, dtype=ident["dtype"], device=device)
