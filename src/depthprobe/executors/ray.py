"""``RayExecutor``: a sweep's planned units on Ray actors, one model copy per worker, across GPUs and nodes.

``run_sweep(spec_or_model, task, grid, out_dir=..., executor=RayExecutor(...))`` plans the same
units as always (chunks of conditions scored together by the engine, or one condition per unit
for generation). This executor starts one actor per worker (``num_gpus_per_worker`` GPUs and
``num_cpus_per_worker`` CPUs each, placed by Ray), each of which loads the model once from its
:class:`~depthprobe.model_spec.ModelSpec` and checks it has the identity the run's manifest
records. Units go to the least busy worker (two in flight per worker, so none waits for the
driver); for generation with fewer conditions than workers, each condition is split into
document shards, and the shards are merged into one condition before anything is stored.

Workers return results; the driver stays the only writer of the run directory (atomic
per-condition files, the manifest check and resume of :func:`~depthprobe.sweep.run_sweep`), so
no shared file system is needed. A worker that dies mid-unit is restarted by Ray
(``max_restarts``) and its unit retried (``max_task_retries``); a unit whose worker cannot be
restarted is re-run on another (``max_attempts``). A unit's conditions are stored only when the
unit's result arrives, once, so a condition is never lost, doubled or mixed; a killed driver
loses only the units in flight, and re-running resumes.

Ray is imported on first use (``pip install 'depthprobe[ray]'``).
"""

from __future__ import annotations

import math
import pickle
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from depthprobe.engine.grids import condition_id
from depthprobe.executors.shards import Shard, evaluate_shard, merge_shards
from depthprobe.executors.worker import Worker
from depthprobe.identity import model_identity, spec_identity_mismatch
from depthprobe.model_spec import ModelSpec, as_model_spec
from depthprobe.sweep.executor import ConditionResult, SweepSpec, WorkUnit
from depthprobe.tasks import get_task

__all__ = ["RayExecutor", "evaluate_shard", "merge_shards"]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("RayExecutor needs Ray: pip install 'depthprobe[ray]' (ray>=2.50)") from None
    return ray


@dataclass
class _Slot:
    actor: Any
    model: ModelSpec | None
    in_flight: int = 0
    dead: bool = False
    info_ref: Any = None
    info: dict[str, Any] = field(default_factory=dict)


def _positive(name: str, value: Any, *, integer: bool, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    low_ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not ok_type or not low_ok:
        what = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {what} {'>= 0' if allow_zero else '> 0'}, got {value!r}")


class RayExecutor:
    """Run a sweep's units on Ray actors: ``run_sweep(..., executor=RayExecutor())``.

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``, or ``None`` to use
    ``RAY_ADDRESS`` or start a local one); ignored when this process is already connected.
    ``num_workers``: actors (default: as many as the cluster's GPUs, or CPUs, allow);
    ``num_gpus_per_worker``: GPUs per actor (default 1 when the cluster has GPUs, else 0), each
    worker sees only its own through ``CUDA_VISIBLE_DEVICES``; ``num_cpus_per_worker``: CPUs per
    actor (also its torch thread count). Faults: ``max_restarts`` per actor, ``max_task_retries``
    per unit on a restarted actor, ``max_attempts`` per unit across actors. Actors live until
    :meth:`close` (or the end of a ``with`` block), so several sweeps (a campaign) share them.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_workers: int | None = None,
        num_gpus_per_worker: float | None = None,
        num_cpus_per_worker: float = 1,
        max_restarts: int = 3,
        max_task_retries: int = 3,
        max_attempts: int = 3,
        in_flight: int = 2,
        runtime_env: dict[str, Any] | None = None,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise ValueError(
                f"address must be a string ('auto', 'ray://host:10001', 'host:6379') or None, got {address!r}"
            )
        if num_workers is not None:
            _positive("num_workers", num_workers, integer=True)
        if num_gpus_per_worker is not None:
            _positive("num_gpus_per_worker", num_gpus_per_worker, integer=False, allow_zero=True)
        _positive("num_cpus_per_worker", num_cpus_per_worker, integer=False)
        _positive("max_restarts", max_restarts, integer=True, allow_zero=True)
        _positive("max_task_retries", max_task_retries, integer=True, allow_zero=True)
        _positive("max_attempts", max_attempts, integer=True)
        _positive("in_flight", in_flight, integer=True)
        self.address = address
        self.num_workers = num_workers
        self.num_gpus_per_worker = num_gpus_per_worker
        self.num_cpus_per_worker = num_cpus_per_worker
        self.max_restarts = max_restarts
        self.max_task_retries = max_task_retries
        self.max_attempts = max_attempts
        self.in_flight = in_flight
        self.runtime_env = runtime_env
        self.init_options = dict(init_options or {})
        self.stats: dict[str, int] = {"units": 0, "resubmitted": 0, "conditions": 0, "shards": 0}
        self._slots: list[_Slot] = []
        self._lock = threading.Condition()
        self._owns_ray = False
        self._resolved: tuple[int, float] | None = None

    # --- cluster ------------------------------------------------------------------------
    def _connect(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, **self.init_options}
            if self.runtime_env is not None:
                options["runtime_env"] = self.runtime_env
            ray.init(address=self.address, **options)
            self._owns_ray = True
        return ray

    def _resources(self) -> tuple[int, float]:
        """(number of workers, GPUs per worker), defaults resolved against the cluster."""
        if self._resolved is None:
            ray = self._connect()
            res = ray.cluster_resources()
            gpus = self.num_gpus_per_worker
            if gpus is None:
                gpus = 1 if res.get("GPU", 0) >= 1 else 0
            n = self.num_workers
            if n is None:
                n = int(res.get("GPU", 0) // gpus) if gpus else int(res.get("CPU", 1) // self.num_cpus_per_worker)
                n = max(1, n)
            self._resolved = (n, gpus)
        return self._resolved

    def worker_device(self) -> str:
        """Where workers put a model whose spec names no device: ``cuda`` with GPUs per worker, else ``cpu``."""
        return "cuda" if self._resources()[1] > 0 else "cpu"

    def workers(self) -> list[dict[str, Any]]:
        """Each live worker's pid, node, ``CUDA_VISIBLE_DEVICES``, Ray GPU ids and model (latest known)."""
        ray = self._connect()
        with self._lock:
            slots = [s for s in self._slots if not s.dead]
        for s in slots:
            if not s.info and s.info_ref is not None:
                s.info = ray.get(s.info_ref)
        return [dict(s.info) for s in slots]

    def close(self) -> None:
        """Stop every worker (and the local Ray instance this executor started)."""
        if not self._slots and not self._owns_ray:
            return
        ray = _import_ray()
        with self._lock:
            slots, self._slots = self._slots, []
        for s in slots:
            try:
                ray.kill(s.actor, no_restart=True)
            except Exception:  # noqa: BLE001  (already gone)
                pass
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        self._resolved = None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- worker pool --------------------------------------------------------------------
    def _new_slot(self, model: ModelSpec) -> _Slot:
        ray = self._connect()
        _, gpus = self._resources()
        cls = ray.remote(Worker).options(
            num_cpus=self.num_cpus_per_worker,
            num_gpus=gpus,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_task_retries,
        )
        actor = cls.remote(max(1, int(self.num_cpus_per_worker)))
        slot = _Slot(actor, model, info_ref=actor.info.remote())
        self._slots.append(slot)
        return slot

    def _pick(self, model: ModelSpec) -> _Slot | None:
        live = [s for s in self._slots if not s.dead]
        same = [s for s in live if s.model == model and s.in_flight < self.in_flight]
        idle_same = [s for s in same if s.in_flight == 0]
        if idle_same:
            return idle_same[0]
        if len(live) < self._resources()[0]:
            return self._new_slot(model)
        idle_other = [s for s in live if s.in_flight == 0]
        if idle_other:  # a worker of another sweep's model is free: it reloads
            idle_other[0].model = model
            return idle_other[0]
        return min(same, key=lambda s: s.in_flight) if same else None

    def _acquire(self, model: ModelSpec, *, block: bool) -> _Slot | None:
        with self._lock:
            while True:
                slot = self._pick(model)
                if slot is not None:
                    slot.in_flight += 1
                    return slot
                if not block:
                    return None
                self._lock.wait(timeout=1.0)

    def _release(self, slot: _Slot, *, dead: bool = False) -> None:
        with self._lock:
            slot.in_flight -= 1
            if dead and not slot.dead:
                slot.dead = True
                try:
                    _import_ray().kill(slot.actor, no_restart=True)
                except Exception:  # noqa: BLE001
                    pass
            self._lock.notify_all()

    def _count(self, key: str) -> None:
        with self._lock:  # sweeps of a campaign run from several threads
            self.stats[key] += 1

    # --- the executor interface ---------------------------------------------------------
    def plan(self, units: Sequence[WorkUnit], *, generation: bool | None = None) -> list[tuple[WorkUnit, Shard | None]]:
        """The tasks sent to workers: every unit whole, or for generation with fewer conditions than
        workers, every condition as ``ceil(workers / conditions)`` document shards.

        ``generation`` says whether the sweep's task generates (None: units planned per condition do).
        """
        n_workers = self._resources()[0]
        if generation is None:
            generation = not any(u.engine for u in units)
        conditions = [c for u in units for c in u.conditions]
        if n_workers > 1 and generation and conditions and len(conditions) < n_workers:
            count = math.ceil(n_workers / len(conditions))
            return [(WorkUnit((c,), engine=False), (i, count)) for c in conditions for i in range(count)]
        return [(u, None) for u in units]

    def run(
        self, model: Any, spec: SweepSpec, units: Sequence[WorkUnit], on_result: Callable[[ConditionResult], None]
    ) -> None:
        units = list(units)
        if not units:
            return
        ray = self._connect()
        from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError

        model_spec = as_model_spec(model)
        expected = model_identity(model)
        try:
            pickle.dumps(spec)
        except Exception as err:  # noqa: BLE001
            raise ValueError(
                f"RayExecutor sends the task to workers and needs it by name (or picklable): {err}"
            ) from None
        task = get_task(spec.task, **dict(spec.task_options)) if isinstance(spec.task, str) else spec.task
        queue: deque[tuple[tuple[WorkUnit, Shard | None], int]] = deque(
            (t, 0) for t in self.plan(units, generation=task.output_type == "generate_until")
        )
        pending: dict[Any, tuple[_Slot, tuple[WorkUnit, Shard | None], int]] = {}
        shards: dict[str, dict[int, ConditionResult]] = {}
        delivered: set[str] = set()
        try:
            while queue or pending:
                while queue:
                    slot = self._acquire(model_spec, block=not pending)
                    if slot is None:
                        break
                    job, attempt = queue.popleft()
                    ref = slot.actor.run.remote(model_spec, spec, job[0], job[1])
                    pending[ref] = (slot, job, attempt)
                    self._count("units")
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    slot, job, attempt = pending.pop(ref)
                    try:
                        out = ray.get(ref)
                    except (RayActorError, WorkerCrashedError, ObjectLostError) as err:
                        self._release(slot, dead=True)
                        if attempt + 1 >= self.max_attempts:
                            raise RuntimeError(
                                f"unit {job[0].ids} failed on {attempt + 1} workers; last error: "
                                f"{str(err).splitlines()[0]}"
                            ) from err
                        queue.append((job, attempt + 1))
                        self._count("resubmitted")
                        continue
                    self._release(slot)
                    slot.info = out["info"]
                    mismatch = spec_identity_mismatch(expected, out["identity"])
                    if mismatch:
                        raise ValueError(
                            f"worker on node {out['info']['node_id'][:12]} loaded {model_spec} with "
                            f"{mismatch}; every node needs the same weights at that path"
                        )
                    self._deliver(task, job, out["results"], shards, delivered, on_result)
        finally:
            for ref, (slot, _, _) in pending.items():
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001
                    pass
                self._release(slot)

    def _deliver(
        self,
        task: Any,
        job: tuple[WorkUnit, Shard | None],
        results: list[ConditionResult],
        shards: dict[str, dict[int, ConditionResult]],
        delivered: set[str],
        on_result: Callable[[ConditionResult], None],
    ) -> None:
        unit, shard = job
        if shard is not None:
            (part,) = results
            cid = condition_id(part.condition)
            got = shards.setdefault(cid, {})
            got[shard[0]] = part
            self._count("shards")
            if len(got) < shard[1] or cid in delivered:
                return
            results = [merge_shards(task, [got[i] for i in range(shard[1])])]
            del shards[cid]
        for result in results:
            cid = condition_id(result.condition)
            if cid in delivered:  # a unit is never delivered twice, but stay safe
                continue
            delivered.add(cid)
            self._count("conditions")
            on_result(result)
