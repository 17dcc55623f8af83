"""The executor seam of ``run_sweep``: planned units are plain data another worker can run.

A stand-in for a distributed executor pickles every unit and the sweep spec, runs them on a
*separate* copy of the model, and must store exactly what the default in-process executor stores.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import depthprobe as dp
from depthprobe.sweep import Executor, InProcessExecutor, UnitRunner, WorkUnit, condition_id, plan_units


class PicklingExecutor:
    """Sends every unit through pickle to a worker holding its own model, as a remote executor would."""

    def __init__(self, worker_model) -> None:
        self.worker_model = worker_model
        self.units: list[list[str]] = []

    def run(self, model, spec, units, on_result) -> None:
        runner = UnitRunner(self.worker_model, pickle.loads(pickle.dumps(spec)))
        for unit in units:
            shipped = pickle.loads(pickle.dumps(unit))
            assert shipped == unit
            self.units.append(shipped.ids)
            for result in runner.run(shipped):
                on_result(pickle.loads(pickle.dumps(result)))


def test_a_remote_style_executor_stores_what_the_default_stores(tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    model = dp.load_model(tiny_qwen3_dir)
    worker = dp.load_model(tiny_qwen3_dir)
    kw = dict(limit=4, batch_size=4, progress=False, chunk=2)
    local = dp.run_sweep(model, "organism_openbook", "heads:1", out_dir=tmp_path / "local", **kw)
    executor = PicklingExecutor(worker)
    assert isinstance(executor, Executor) and isinstance(InProcessExecutor(), Executor)
    remote = dp.run_sweep(model, "organism_openbook", "heads:1", out_dir=tmp_path / "remote", executor=executor, **kw)
    ids = ["baseline"] + [f"head:L1H{h}" for h in range(4)]
    assert executor.units == [ids[0:2], ids[2:4], ids[4:5]]  # chunks of 2 pending conditions, baseline first
    assert list(remote["condition"]) == list(local["condition"]) == ids
    for metric in ("acc", "acc_norm", "acc_token_norm"):
        assert list(remote[metric]) == list(local[metric])
    rs = dp.load_results(tmp_path / "remote", samples=True)
    ls = dp.load_results(tmp_path / "local", samples=True)
    assert list(rs["loglikelihoods"]) == list(ls["loglikelihoods"])
    assert (
        rs[rs["condition"] == "head:L1H2"]["loglikelihoods"].tolist()
        != rs[rs["condition"] == "baseline"]["loglikelihoods"].tolist()
    )
    # resuming hands the executor nothing
    again = PicklingExecutor(worker)
    dp.run_sweep(model, "organism_openbook", "heads:1", out_dir=tmp_path / "remote", executor=again, **kw)
    assert again.units == []


def test_plan_units() -> None:
    conditions = [[], [dp.skip_layer(0)], [dp.skip_layer(1)]]
    units = plan_units(conditions, engine=True, chunk=2)
    assert [u.ids for u in units] == [["baseline", "skip:L0"], ["skip:L1"]] and all(u.engine for u in units)
    naive = plan_units(conditions, engine=False, chunk=2)
    assert [u.ids for u in naive] == [["baseline"], ["skip:L0"], ["skip:L1"]] and not any(u.engine for u in naive)
    assert units[0] == WorkUnit(((), (dp.skip_layer(0),)), engine=True)
    assert [condition_id(c) for c in units[0].conditions] == units[0].ids
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        plan_units(conditions, engine=True, chunk=0)
