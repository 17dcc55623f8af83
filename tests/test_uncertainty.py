"""Paired standard errors and 95% intervals of deltas, checked against a hand computation on a fixed table."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from depthprobe.results import RunDir, load_results
from depthprobe.uncertainty import paired_delta_stats, significant, t_quantile
from tests.manifests import synthetic_manifest

MANIFEST = synthetic_manifest()
# Student t critical values (two-sided 95%) from a printed table: dof 4 and dof 3.
T4, T3 = 2.7764451051977987, 3.1824463052842638
BASE = [1, 1, 0, 1, 0]
# condition A loses docs 0 and 3: d = [-1, 0, 0, -1, 0]; mean -0.4, sd sqrt(1.2/4), se sd/sqrt(5)
A = [0, 1, 0, 0, 0]
SE_A = math.sqrt(1.2 / 4) / math.sqrt(5)
# condition B gains doc 2 and loses doc 0, and lacks doc 4: d = [-1, 0, 1, 0] over docs 0..3
B = {0: 0, 1: 1, 2: 1, 3: 1}
SE_B = math.sqrt(2.0 / 3) / 2


def samples(correct: dict[int, int], order: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "doc_id": order,
            "correct": [bool(correct[i]) for i in order],
            "exact_match,flex": [float(correct[i]) for i in order],
        }
    )


def write(tmp_path: Path) -> Path:
    run = RunDir(tmp_path / "run", MANIFEST)
    for cid, values, order in [
        ("baseline", dict(enumerate(BASE)), [0, 1, 2, 3, 4]),
        ("head:L0H0", dict(enumerate(A)), [4, 2, 0, 3, 1]),  # shuffled: pairing by doc_id
        ("head:L0H1", B, [3, 1, 0, 2]),
    ]:
        df = samples(values, order)
        acc = float(df["correct"].mean())
        run.write(
            cid,
            {"acc": acc, "acc_stderr": 0.1, "exact_match,flex": acc},
            df,
            kind="head",
            layer=0,
            layer_max=0,
            index=int(cid[-1]) if cid != "baseline" else None,
            n_interventions=int(cid != "baseline"),
        )
    return tmp_path / "run"


def test_t_quantile_matches_the_table() -> None:
    assert t_quantile(0.95, 4) == pytest.approx(T4, rel=1e-12)
    assert t_quantile(0.95, 3) == pytest.approx(T3, rel=1e-12)
    with pytest.raises(ValueError, match="level must be in"):
        t_quantile(95, 4)


def test_paired_stderr_equals_hand_computation(tmp_path: Path) -> None:
    df = load_results(write(tmp_path)).set_index("condition")
    a, b, base = df.loc["head:L0H0"], df.loc["head:L0H1"], df.loc["baseline"]
    assert a["delta_acc"] == pytest.approx(-0.4)
    assert a["delta_acc_stderr"] == pytest.approx(SE_A, rel=1e-12)
    assert (a["delta_acc_ci_low"], a["delta_acc_ci_high"]) == pytest.approx((-0.4 - T4 * SE_A, -0.4 + T4 * SE_A))
    # the metric with a comma (lm-eval's filter names) pairs on its own per-document column
    assert a["delta_exact_match,flex_stderr"] == pytest.approx(SE_A, rel=1e-12)
    # B lacks doc 4: only the four shared documents pair (mean of d = 0, dof 3)
    assert b["delta_acc_stderr"] == pytest.approx(SE_B, rel=1e-12)
    assert (b["delta_acc_ci_low"], b["delta_acc_ci_high"]) == pytest.approx((-T3 * SE_B, T3 * SE_B))
    assert (base["delta_acc_stderr"], base["delta_acc_ci_low"], base["delta_acc_ci_high"]) == (0.0, 0.0, 0.0)
    assert "delta_acc_stderr_stderr" not in df.columns and "delta_acc_stderr" in df.columns
    sig = significant(df.reset_index(), "acc")
    assert list(sig) == [False, False, False]  # -0.4 +- 0.68 and 0 +- ...: none excludes 0


def test_significant_when_interval_excludes_zero() -> None:
    rows = [("baseline", i, 1.0) for i in range(6)] + [("c", i, v) for i, v in enumerate([0, 0, 0, 0, 0, 1.0])]
    s = pd.DataFrame(rows, columns=["condition", "doc_id", "correct"])
    stats = paired_delta_stats(s, ["acc"])
    # d = [-1]*5 + [0]: mean -5/6, var = (5 * (1/6)^2 + (5/6)^2) / 5 = 1/6, se = sqrt(1/6) / sqrt(6)
    se = math.sqrt(1 / 6) / math.sqrt(6)
    assert stats.loc["c", "delta_acc_stderr"] == pytest.approx(se, rel=1e-12)
    df = stats.reset_index(names="condition")
    assert list(significant(df, "acc")) == [False, True]
    with pytest.raises(ValueError, match="no interval for 'acc_norm'"):
        significant(df, "acc_norm")


def test_no_doc_id_means_no_interval_columns() -> None:
    s = pd.DataFrame({"condition": ["baseline", "c"], "correct": [1, 0]})
    assert paired_delta_stats(s, ["acc"]).empty
