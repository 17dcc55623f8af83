"""The Ray actor of :class:`~depthprobe.executors.ray.RayExecutor`: one model copy per worker, loaded once from
its :class:`~depthprobe.model_spec.ModelSpec`, whose identity the driver checks against the run's manifest."""

from __future__ import annotations

import os
import pickle
from typing import Any

from depthprobe.executors.shards import Shard, evaluate_shard
from depthprobe.identity import model_identity
from depthprobe.model_spec import ModelSpec
from depthprobe.sweep.executor import SweepSpec, UnitRunner, WorkUnit

__all__ = ["Worker"]


class Worker:
    """One Ray actor: loads a model once (reloading only when handed another spec) and runs units."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.spec: ModelSpec | None = None
        self.model: Any = None
        self.identity: dict[str, Any] | None = None
        self.runners: dict[bytes, UnitRunner] = {}

    def info(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {
            "pid": os.getpid(),
            "node_id": ctx.get_node_id(),
            "actor_id": ctx.get_actor_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "model": None if self.spec is None else str(self.spec),
        }

    def _ensure(self, spec: ModelSpec) -> None:
        if spec != self.spec:
            self.model, self.runners, self.spec = None, {}, None
            self.model = spec.load()
            self.identity = model_identity(self.model)
            self.spec = spec

    def run(self, spec: ModelSpec, sweep: SweepSpec, unit: WorkUnit, shard: Shard | None) -> dict[str, Any]:
        self._ensure(spec)
        key = pickle.dumps(sweep)
        runner = self.runners.get(key)
        if runner is None:
            if len(self.runners) >= 4:
                self.runners.clear()
            runner = self.runners[key] = UnitRunner(self.model, sweep)
        if shard is None:
            results = runner.run(unit)
        else:
            results = [evaluate_shard(runner, unit.conditions[0], *shard)]
        return {"info": self.info(), "identity": self.identity, "results": results}
