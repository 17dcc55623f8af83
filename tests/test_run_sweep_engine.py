"""``run_sweep`` on multiple-choice tasks goes through the engine and equals the per-condition evaluator."""

from pathlib import Path

import pytest

import depthprobe as dp


@pytest.mark.parametrize("grid", ["layers", "heads:1"])
def test_engine_sweep_equals_naive_sweep(tiny_qwen3_dir: Path, tmp_path: Path, grid: str) -> None:
    model = dp.load_model(tiny_qwen3_dir)
    fast = dp.run_sweep(model, "organism_openbook", grid, out_dir=tmp_path / "fast", limit=4, batch_size=4,
                        progress=False, chunk=3)
    naive = dp.run_sweep(model, "organism_openbook", grid, out_dir=tmp_path / "naive", limit=4, batch_size=4,
                         progress=False, engine=False)
    assert list(fast["condition"]) == list(naive["condition"])
    for metric in ("acc", "acc_norm", "acc_token_norm"):
        assert list(fast[metric]) == list(naive[metric])
    fs = dp.load_results(tmp_path / "fast", samples=True)
    ns = dp.load_results(tmp_path / "naive", samples=True)
    assert len(fs) == len(ns) == 4 * len(fast)
    for a, b in zip(fs["loglikelihoods"], ns["loglikelihoods"]):
        assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-4
    assert list(fs["prediction"]) == list(ns["prediction"])
    assert fast.loc[fast["condition"] != "baseline", "delta_acc"].notna().all()
