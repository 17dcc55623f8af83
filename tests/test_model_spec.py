"""ModelSpec: a model described, not loaded. What the driver reads from it (identity, dims) must equal what a
loaded model reports, so a run directory started from a spec and one started from the loaded model are the same run."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import depthprobe as dp
from depthprobe.identity import model_identity
from depthprobe.model_spec import as_model_spec
from tests.bridges import bridge


@pytest.mark.parametrize("which", ["tiny", "organism"])
def test_identity_and_dims_equal_the_loaded_models(which: str, tiny_llama_dir: Path) -> None:
    name = str(tiny_llama_dir) if which == "tiny" else "organism-base"
    spec = dp.ModelSpec(name, device="cpu")
    model = dp.load_model(spec)
    assert spec.identity() == model_identity(model)
    assert spec.dims() == dp.model_dims(model)
    assert pickle.loads(pickle.dumps(spec)) == spec and hash(pickle.loads(pickle.dumps(spec))) == hash(spec)
    assert as_model_spec(model).identity() == spec.identity()
    half = dp.load_model(dp.ModelSpec(name, dtype="bfloat16", device="cpu"))
    assert next(half.parameters()).dtype == torch.bfloat16
    assert dp.ModelSpec(name, dtype=torch.bfloat16, device="cpu").identity()["dtype"] == "bfloat16"


def test_a_spec_and_the_loaded_model_make_the_same_run(tiny_llama_dir: Path, tmp_path: Path) -> None:
    kw = dict(limit=3, batch_size=4, progress=False, chunk=2)
    spec = dp.ModelSpec(tiny_llama_dir, device="cpu")
    from_spec = dp.run_sweep(spec, "organism_openbook", "groups:2", out_dir=tmp_path / "a", **kw)
    from_model = dp.run_sweep(bridge(tiny_llama_dir), "organism_openbook", "groups:2", out_dir=tmp_path / "b", **kw)
    assert list(from_spec["condition"]) == ["baseline", "group:L2G0", "group:L2G1"]
    assert list(from_spec["acc"]) == list(from_model["acc"])
    a = dp.load_results(tmp_path / "a", samples=True)
    b = dp.load_results(tmp_path / "b", samples=True)
    assert list(a["loglikelihoods"]) == list(b["loglikelihoods"])
    ma, mb = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab")
    assert {k: ma[k] for k in ("model", "revision", "dtype", "device")} == {
        k: mb[k] for k in ("model", "revision", "dtype", "device")
    }
    # the loaded model resumes the spec's run directory (nothing left to do) and vice versa
    dp.run_sweep(bridge(tiny_llama_dir), "organism_openbook", "groups:2", out_dir=tmp_path / "a", **kw)
    with pytest.raises(ValueError, match="dtype"):
        dp.run_sweep(
            dp.ModelSpec(tiny_llama_dir, dtype="bfloat16", device="cpu"),
            "organism_openbook",
            "groups:2",
            out_dir=tmp_path / "b",
            **kw,
        )


def test_bad_specs_and_executors_fail_in_one_line() -> None:
    from depthprobe.sweep import Executor

    assert isinstance(dp.RayExecutor(), Executor)  # constructing one contacts no cluster
    with pytest.raises(ValueError, match="unknown dtype 'f8'; valid:"):
        dp.ModelSpec("organism-base", dtype="f8")
    with pytest.raises(ValueError, match="needs a model name or path"):
        dp.ModelSpec("")
    with pytest.raises(dp.ModelNotFoundError):
        dp.ModelSpec("/nonexistent/model").dims()
    for kw, match in [
        ({"num_workers": 0}, "num_workers must be an int > 0"),
        ({"num_gpus_per_worker": -1}, "num_gpus_per_worker must be a number >= 0"),
        ({"num_cpus_per_worker": 0}, "num_cpus_per_worker must be a number > 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            dp.RayExecutor(**kw)


def test_the_cli_builds_the_ray_executor_it_is_asked_for() -> None:
    import argparse

    from depthprobe.__main__ import add_executor_flags, make_executor

    parser = argparse.ArgumentParser()
    add_executor_flags(parser)
    ex = make_executor(
        parser.parse_args(
            [
                "--executor",
                "ray",
                "--address",
                "auto",
                "--workers",
                "3",
                "--gpus-per-worker",
                "1",
                "--cpus-per-worker",
                "4",
            ]
        )
    )
    assert isinstance(ex, dp.RayExecutor)
    assert (ex.address, ex.num_workers, ex.num_gpus_per_worker, ex.num_cpus_per_worker) == ("auto", 3, 1, 4)
    assert make_executor(parser.parse_args([])) is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", "0"])
