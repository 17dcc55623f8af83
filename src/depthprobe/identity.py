"""The identity of a model in a run manifest: which weights, as loaded or edited since, in which dtype, where.

Two runs compute the same numbers only with the same weights, so a model's identity names them:

- ``revision`` is the checkpoint: the hub commit, or for a local directory :func:`weights_fingerprint`,
  a content hash of its weight files (files retrained or edited on disk are another revision);
- ``weights`` says whether the parameters in memory are still those ``load_model`` loaded (None)
  or not: then it holds their live fingerprint (:func:`~depthprobe.hashing.parameters_fingerprint`,
  exact, on the model's device, the same on every CPU kernel set). Weights edited in memory after
  loading are thus another model, and a run directory begun with the checkpoint's is refused.

A :class:`~depthprobe.model_spec.ModelSpec` is not loaded; its identity (:func:`checkpoint_identity`)
is read from its config and weight files and has ``weights`` None, which is what a freshly loaded
copy reports. So a run directory begun from a spec is resumed with the loaded model and the other
way round, and an executor's worker, which loads the spec itself, must report the same identity
as the run (:func:`spec_identity_mismatch`): a driver's model edited in memory cannot be shipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import torch

from depthprobe.adapter import adapter_for
from depthprobe.hashing import parameters_fingerprint, weights_digest
from depthprobe.models import ModelDims, loaded_fingerprint, model_dims

__all__ = [
    "IDENTITY_FIELDS",
    "DescribedModel",
    "ResolvedModel",
    "checkpoint_identity",
    "checkpoint_revision",
    "live_weights",
    "model_identity",
    "resolved",
    "spec_identity_mismatch",
    "weights_fingerprint",
]

#: Identity fields a worker's loaded model must share with the model the run's manifest was built from.
IDENTITY_FIELDS = ("name", "revision", "dtype", "device", "weights")


def weights_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """A content hash of a local checkpoint directory's weight files, or None if it has none.

    The SHA-256 of every byte of each weight file (``depthprobe.hashing.weights_digest``:
    hashed once per file version and cached, so an 8B checkpoint is read once, not per run),
    combined with the file names. It is the revision of a local model: a run directory made
    with other weights, or weights edited in place, is refused instead of silently resumed.
    """
    files = weights_digest(path)
    if files is None:
        return None
    combined = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return "local-" + combined[:32]


def checkpoint_revision(name: Any, commit: str | None) -> str | None:
    """The revision of checkpoint ``name``: a local directory's :func:`weights_fingerprint`, else the hub commit."""
    if name and os.path.isdir(str(name)):
        return weights_fingerprint(str(name)) or commit
    return commit


def live_weights(model: Any) -> str | None:
    """None while ``model``'s parameters are bit for bit those ``load_model`` loaded, else their live fingerprint.

    A model that ``load_model`` did not load cannot be vouched for: it always gets its live fingerprint.
    """
    live = parameters_fingerprint(model.named_parameters())
    return None if live == loaded_fingerprint(model) else live


@runtime_checkable
class DescribedModel(Protocol):
    """A model described, not loaded (a :class:`~depthprobe.model_spec.ModelSpec`), that knows its own identity."""

    def identity(self) -> dict[str, Any]: ...

    def dims(self) -> ModelDims: ...

    def load(self) -> Any: ...


def checkpoint_identity(config: Any, source: str, dtype: torch.dtype, device: str) -> dict[str, Any]:
    """The identity of a checkpoint as ``load_model`` would load it (``config``: its Hugging Face config;
    ``source``: its directory or hub id), equal to ``model_identity`` of the freshly loaded model."""
    name = getattr(config, "_name_or_path", None) or source
    return {
        "name": str(name),
        "revision": checkpoint_revision(name, getattr(config, "_commit_hash", None)),
        "dtype": str(dtype).replace("torch.", ""),
        "device": torch.device(device).type,
        "attn_implementation": "eager",  # the bridge forces eager attention so hooks see patterns
        "weights": None,  # as loaded: a spec cannot hold edits
    }


def model_identity(model: Any) -> dict[str, Any]:
    """What identifies a model in a manifest: name, revision, dtype, device kind, attn_implementation, weights.

    A loaded model: what its adapter reports, the revision of a local directory being its
    weights' fingerprint, and ``weights`` (:func:`live_weights`): None while its parameters
    are those ``load_model`` loaded. A :class:`~depthprobe.model_spec.ModelSpec`: its own
    identity, read from its config and weight files without loading it.
    """
    if isinstance(model, DescribedModel) and not isinstance(model, torch.nn.Module):
        return model.identity()
    ident = adapter_for(model).identity()
    ident["revision"] = checkpoint_revision(ident["name"], ident["revision"])
    ident["weights"] = live_weights(model)
    return ident


def spec_identity_mismatch(expected: dict[str, Any], got: dict[str, Any]) -> str | None:
    """A one-line description of the first identity field that differs, or None when they agree."""
    for key in IDENTITY_FIELDS:
        if key == "name" and expected.get("revision") is not None:
            continue  # same weights (hub commit or local fingerprint) under another install path: the same model
        if expected.get(key) != got.get(key):
            note = " (edited in memory after load_model: workers cannot load them)" if key == "weights" else ""
            return f"{key}={got.get(key)!r} where the run expects {key}={expected.get(key)!r}{note}"
    return None


class ResolvedModel:
    """A model (loaded, or a :class:`~depthprobe.model_spec.ModelSpec`) with what a sweep reads of it, read once.

    ``dims`` (layer and head counts), ``identity`` (:func:`model_identity`, whose live-weights
    fingerprint reads every parameter) and, for a loaded model, ``adapter`` are computed on first
    use and then kept: the runner resolves its model once and hands this value to the engines,
    attribution and the run directory instead of each asking the model again.
    """

    def __init__(self, model: Any) -> None:
        if isinstance(model, ResolvedModel):
            raise TypeError("already resolved: use depthprobe.identity.resolved(model), which returns it unchanged")
        self.model = model

    @property
    def loaded(self) -> bool:
        """True for a loaded model, False for a description that workers load themselves."""
        return not (isinstance(self.model, DescribedModel) and not isinstance(self.model, torch.nn.Module))

    @cached_property
    def dims(self) -> ModelDims:
        return model_dims(self.model) if self.loaded else self.model.dims()

    @cached_property
    def identity(self) -> dict[str, Any]:
        return model_identity(self.model)

    @cached_property
    def adapter(self) -> Any:
        if not self.loaded:
            raise TypeError(f"{self.model} is described, not loaded: it has no adapter until a worker loads it")
        return adapter_for(self.model)

    def __repr__(self) -> str:
        return f"ResolvedModel({type(self.model).__name__})"


def resolved(model: Any) -> ResolvedModel:
    """``model`` resolved (:class:`ResolvedModel`); a resolved model is returned unchanged."""
    return model if isinstance(model, ResolvedModel) else ResolvedModel(model)
