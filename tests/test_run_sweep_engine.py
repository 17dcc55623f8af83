"""``run_sweep`` on multiple-choice tasks goes through the engine and equals the per-condition evaluator."""

from pathlib import Path

import pytest

import depthprobe as dp
from depthprobe.sweep import parse_grid

from .tolerance import ForwardShape, assert_loglikelihoods_close, text_logit_scale


@pytest.mark.parametrize("grid", ["layers", "heads:1"])
def test_engine_sweep_equals_naive_sweep(tiny_qwen3_dir: Path, tmp_path: Path, grid: str) -> None:
    model = dp.load_model(tiny_qwen3_dir)
    fast = dp.run_sweep(
        model, "organism_openbook", grid, out_dir=tmp_path / "fast", limit=4, batch_size=4, progress=False, chunk=3
    )
    naive = dp.run_sweep(
        model,
        "organism_openbook",
        grid,
        out_dir=tmp_path / "naive",
        limit=4,
        batch_size=4,
        progress=False,
        engine=False,
    )
    assert list(fast["condition"]) == list(naive["condition"])
    for metric in ("acc", "acc_norm", "acc_token_norm"):
        assert list(fast[metric]) == list(naive[metric])
    fs = dp.load_results(tmp_path / "fast", samples=True)
    ns = dp.load_results(tmp_path / "naive", samples=True)
    assert len(fs) == len(ns) == 4 * len(fast)
    scale = 0.0
    for cond in parse_grid(model, grid) + [[]]:
        with dp.ablate(model, *cond):
            scale = max(
                scale,
                text_logit_scale(model, [p + c for p, cs in zip(ns["prompt"][:4], ns["choices"][:4]) for c in cs]),
            )
    for a, b, n in zip(fs["loglikelihoods"], ns["loglikelihoods"], ns["n_tokens"]):
        assert_loglikelihoods_close(list(a), list(b), list(n), ForwardShape.of(model), scale)
    assert list(fs["prediction"]) == list(ns["prediction"])
    assert fast.loc[fast["condition"] != "baseline", "delta_acc"].notna().all()
