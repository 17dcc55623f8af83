"""The manifest of a run directory that a test fills by hand (``RunDir``), with no model or task behind it."""

from __future__ import annotations

from typing import Any


def synthetic_manifest(**changes: Any) -> dict[str, Any]:
    """A log-likelihood run of model "m" on task "t", with ``changes`` applied."""
    return {
        "model": "m",
        "revision": None,
        "dtype": "float32",
        "device": "cpu",
        "task": "t",
        "task_options": {},
        "protocol": "loglikelihood",
        "num_fewshot": 0,
        "seed": None,
        "limit": None,
        "max_gen_toks": None,
        **changes,
    }
