"""Run directories: atomic per-condition files, resume without double counting, manifest mismatch refused.

The sweeps here score a fixed text by log-likelihood on a tiny random Llama through the sweep
engine, and the stored numbers are checked against a naive forward under ``ablate``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

import depthprobe as dp
from depthprobe.results import ManifestMismatchError, RunDir, build_manifest, load_results
from depthprobe.results import rundir as results_mod
from depthprobe.sweep import condition_id, condition_logits, head_grid, layer_grid, sweep_conditions

from .tolerance import U32, ForwardShape, loglikelihood_bound, text_logit_scale

TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path) -> torch.nn.Module:
    return dp.load_model(tiny_llama_dir)


def scorer(model, calls: list[str]):
    """A real evaluation: per-token log-likelihood of TEXT under the condition (engine), one sample row per token."""
    ids = model.tokenizer(TEXT, return_tensors="pt")["input_ids"]

    def evaluate_condition(condition):
        calls.append(condition_id(condition))
        logits = condition_logits(model, ids, None, [condition])[condition_id(condition)]
        lp = torch.log_softmax(logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
        samples = pd.DataFrame({"position": range(len(lp)), "loglikelihood": lp.tolist()})
        return {"ll": float(lp.sum()), "ll_stderr": float(lp.std() / len(lp) ** 0.5)}, samples

    return ids, evaluate_condition


def naive_ll(model, ids, condition) -> float:
    with torch.no_grad(), dp.ablate(model, *condition):
        logits = model(ids)
    return float(torch.log_softmax(logits[0, :-1], -1).gather(1, ids[0, 1:, None]).sum())


def manifest(model, **kw):
    return build_manifest(model, task="text_ll", protocol="loglikelihood", limit=kw.pop("limit", None), **kw)


def test_store_load_and_deltas(model, tmp_path: Path) -> None:
    calls: list[str] = []
    ids, fn = scorer(model, calls)
    run = RunDir(tmp_path / "run", manifest(model))
    conditions = layer_grid(model) + head_grid(model, 1)
    ran = sweep_conditions(run, conditions, fn, progress=False)
    assert ran == ["baseline"] + [condition_id(c) for c in conditions]
    df = load_results(tmp_path / "run")
    assert len(df) == 1 + len(conditions) and df["condition"].iloc[0] == "baseline"
    base = naive_ll(model, ids, [])
    n_tok = ids.shape[1] - 1
    for cond in [[]] + conditions:
        row = df[df["condition"] == condition_id(cond)].iloc[0]
        ll = naive_ll(model, ids, cond)
        with dp.ablate(model, *cond):
            scale = text_logit_scale(model, [TEXT])
        tol = loglikelihood_bound(ForwardShape.of(model), scale, n_tok, ll)  # tests/tolerance.py
        assert row["ll"] == pytest.approx(ll, abs=tol)
        assert row["delta_ll"] == pytest.approx(ll - base, abs=2 * tol)
    assert "delta_ll_stderr" not in df.columns
    head = df[df["condition"] == "head:L1H2"].iloc[0]
    assert (head["kind"], head["layer"], head["index"], head["n_interventions"]) == ("head", 1, 2, 1)
    per_sample = load_results(tmp_path / "run", samples=True)
    assert len(per_sample) == n_tok * (1 + len(conditions))
    sums = per_sample.groupby("condition")["loglikelihood"].sum()
    for cid, ll in zip(df["condition"], df["ll"]):
        assert sums[cid] == pytest.approx(ll, abs=n_tok * U32 * abs(ll))  # float64 sum of the float32 terms
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["task"] == "text_ll" and m["dtype"] == "float32" and m["device"] == "cpu"
    assert m["versions"]["torch"] == torch.__version__.split("+")[0] or m["versions"]["torch"].startswith("2.")


def test_resume_skips_finished_and_counts_nothing_twice(model, tmp_path: Path) -> None:
    calls: list[str] = []
    _, fn = scorer(model, calls)
    sweep_conditions(RunDir(tmp_path, manifest(model)), layer_grid(model)[:2], fn, progress=False)
    assert calls == ["baseline", "skip:L0", "skip:L1"]
    first = load_results(tmp_path)
    calls.clear()
    ran = sweep_conditions(RunDir(tmp_path, manifest(model)), layer_grid(model), fn, progress=False)
    assert calls == ran == ["skip:L2"]
    df = load_results(tmp_path)
    assert list(df["condition"]) == ["baseline", "skip:L0", "skip:L1", "skip:L2"]
    pd.testing.assert_frame_equal(
        df.iloc[:3].drop(columns="delta_ll"), first.drop(columns="delta_ll"), check_dtype=False
    )
    calls.clear()
    assert sweep_conditions(RunDir(tmp_path, manifest(model)), layer_grid(model), fn, progress=False) == []
    assert calls == []


def test_kill_mid_condition_loses_only_that_one(model, tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    _, fn = scorer(model, calls)
    real_replace = os.replace

    def dying_replace(src, dst):
        if "skip_L1" in str(dst):  # killed after the temporary file is written, before the rename
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(results_mod.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        sweep_conditions(RunDir(tmp_path, manifest(model)), layer_grid(model), fn, progress=False)
    monkeypatch.setattr(results_mod.os, "replace", real_replace)
    assert list(load_results(tmp_path)["condition"]) == ["baseline", "skip:L0"]
    assert not list((tmp_path / "conditions").glob(".*"))  # no half-written file left behind
    calls.clear()
    sweep_conditions(RunDir(tmp_path, manifest(model)), layer_grid(model), fn, progress=False)
    assert calls == ["skip:L1", "skip:L2"]
    assert list(load_results(tmp_path)["condition"]) == ["baseline", "skip:L0", "skip:L1", "skip:L2"]


def test_partial_file_from_a_hard_kill_is_ignored(model, tmp_path: Path) -> None:
    """A process killed mid-write (SIGKILL: no cleanup) leaves only a hidden temporary file."""
    calls: list[str] = []
    _, fn = scorer(model, calls)
    run = RunDir(tmp_path, manifest(model))
    sweep_conditions(run, layer_grid(model)[:1], fn, progress=False)
    partial = run.condition_path("skip:L1")
    (partial.parent / f".{partial.name}.12345.tmp").write_text('{"condition": "skip:L1", "metr')
    assert list(load_results(tmp_path)["condition"]) == ["baseline", "skip:L0"]
    calls.clear()
    sweep_conditions(RunDir(tmp_path, manifest(model)), layer_grid(model)[:2], fn, progress=False)
    assert calls == ["skip:L1"]


def test_manifest_mismatch_refused(model, tmp_path: Path) -> None:
    RunDir(tmp_path, manifest(model, limit=10))
    with pytest.raises(ManifestMismatchError, match=r"limit=10, but this command has limit=20"):
        RunDir(tmp_path, manifest(model, limit=20))
    other = build_manifest(model, task="mmlu", protocol="loglikelihood", limit=10)
    with pytest.raises(ManifestMismatchError, match=r"task='text_ll', but this command has task='mmlu'"):
        RunDir(tmp_path, other)
    changed = dict(manifest(model, limit=10), model="/elsewhere/model")
    with pytest.raises(ManifestMismatchError, match="model="):
        RunDir(tmp_path, changed)
    RunDir(tmp_path, manifest(model, limit=10))  # the same command is accepted


def test_retrained_weights_in_the_same_directory_are_refused(tmp_path: Path) -> None:
    from depthprobe.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / "ckpt", arch="llama", n_layers=2, seed=0)
    first = manifest(dp.load_model(path))
    assert first["revision"].startswith("local-")
    RunDir(tmp_path / "run", first)
    make_tiny_model(tmp_path / "ckpt", arch="llama", n_layers=2, seed=1)  # retrained in place
    second = manifest(dp.load_model(path))
    assert second["model"] == first["model"] and second["revision"] != first["revision"]
    with pytest.raises(ManifestMismatchError, match="revision="):
        RunDir(tmp_path / "run", second)
    assert manifest(dp.load_model(path))["revision"] == second["revision"]  # same weights, same fingerprint


def test_long_condition_ids_get_short_unique_files(model, tmp_path: Path) -> None:
    run = RunDir(tmp_path, manifest(model))
    long_a = "+".join(f"o_proj:L{i}" for i in range(40))
    long_b = long_a + "+o_proj:L40"
    run.write(long_a, {"acc": 0.5})
    run.write(long_b, {"acc": 0.25})
    assert run.done(long_a) and run.done(long_b) and not run.done("baseline")
    assert all(len(p.name) < 120 for p in (tmp_path / "conditions").iterdir())
    df = load_results(tmp_path)
    assert dict(zip(df["condition"], df["acc"])) == {long_a: 0.5, long_b: 0.25}
    assert df["delta_acc"].isna().all()  # no baseline yet


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_results(tmp_path)
