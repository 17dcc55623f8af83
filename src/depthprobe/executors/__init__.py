"""Executors beyond the default in-process one: :class:`~depthprobe.executors.ray.RayExecutor`
runs a sweep's planned units on Ray actors across GPUs and nodes (``pip install depthprobe[ray]``).

Importing this package does not import Ray; the executor imports it when first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RayExecutor"]


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        from depthprobe.executors.ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'depthprobe.executors' has no attribute {name!r}")
