"""Executors beyond the default in-process one: :class:`~depthprobe.executors.ray.RayExecutor`
runs a sweep's planned units on Ray actors across GPUs and nodes (``pip install depthprobe[ray]``).

Importing this package does not import Ray; the executor imports it when first used.
"""

from depthprobe.executors.ray import RayExecutor

__all__ = ["RayExecutor"]
