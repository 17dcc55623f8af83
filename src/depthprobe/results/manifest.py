"""A run's manifest: what identifies the computation (model, data, task, protocol, ...) and its digest."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from depthprobe.identity import resolved

__all__ = ["IDENTITY_KEYS", "DamagedRunError", "ManifestMismatchError", "build_manifest", "identity_digest"]

MANIFEST = "manifest.json"
CONDITIONS = "conditions"
DAMAGED = "damaged"
#: Manifest fields that make a run what it is: two commands agreeing on all of them compute the same numbers.
IDENTITY_KEYS = (
    "model",
    "revision",
    "dtype",
    "device",
    "attn_implementation",
    "weights",
    "task",
    "task_options",
    "protocol",
    "num_fewshot",
    "seed",
    "limit",
    "max_gen_toks",
    "data",
    "versions",
)
#: Identity keys left out of the digest while None, so run directories made before they existed keep theirs.
_OPTIONAL_KEYS = ("weights",)
_PACKAGES = ("depthprobe", "torch", "transformers", "transformer-lens", "pandas", "lm_eval")
RECORD_KEYS = ("condition", "metrics", "samples", "run_digest")


class ManifestMismatchError(ValueError):
    """A run directory, or a condition file in it, made by a different command (other model, task or settings)."""


class DamagedRunError(ValueError):
    """A run directory's manifest or condition file that cannot be read; the message names the file and what to do."""


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_commit() -> str | None:
    """The toolkit's git commit (``+dirty`` when its tree has changes), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def build_manifest(
    model: Any,
    *,
    task: str,
    protocol: str,
    num_fewshot: int | None = None,
    seed: int | None = None,
    limit: int | None = None,
    task_options: Mapping[str, Any] | None = None,
    max_gen_toks: int | None = None,
    data: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What a sweep command runs, for ``RunDir``: the identity fields plus provenance (commit, paths).

    ``model`` is a loaded model, a ``ModelSpec`` or either resolved (``depthprobe.identity.ResolvedModel``). ``data``
    describes the documents: ``{"files": {name: sha256}, "documents": sha256 of the
    prompts and answers evaluated}`` (``run_sweep`` fills it in).
    """
    ident = resolved(model).identity
    manifest: dict[str, Any] = {
        "model": ident["name"],
        "revision": ident["revision"],
        "dtype": ident["dtype"],
        "device": ident["device"],
        "attn_implementation": ident["attn_implementation"],
        "weights": ident["weights"],
        "task": task,
        "task_options": dict(sorted((task_options or {}).items())),
        "protocol": protocol,
        "num_fewshot": num_fewshot,
        "seed": seed,
        "limit": limit,
        "max_gen_toks": max_gen_toks,
        "data": dict(data) if data is not None else None,
    }
    manifest.update(extra)
    manifest["versions"] = _versions()
    manifest["git_commit"] = _git_commit()
    return json.loads(json.dumps(manifest, default=str))  # exactly what a reload will see


def identity_fields(manifest: Mapping[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(dict(manifest), default=str))
    return {key: plain.get(key) for key in IDENTITY_KEYS if key not in _OPTIONAL_KEYS or plain.get(key) is not None}


def identity_digest(manifest: Mapping[str, Any]) -> str:
    """The SHA-256 of a manifest's identity fields (``IDENTITY_KEYS``): equal digests, same computation."""
    return hashlib.sha256(json.dumps(identity_fields(manifest), sort_keys=True).encode()).hexdigest()


def first_difference(old: Any, new: Any, key: str) -> tuple[str, Any, Any] | None:
    """The first leaf where two identity values differ, as ``(dotted key, old, new)``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(k), new.get(k), f"{key}.{k}")
            if found:
                return found
        return None
    return None if old == new else (key, old, new)
