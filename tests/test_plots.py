"""Figures plot exactly the values of the results DataFrame; save_figure never crashes.

The DataFrames are real run directories (``RunDir`` + ``load_results``) with varied metric
values, so the test also covers how results columns feed the figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest

from depthprobe.plots import head_attribution, head_heatmap, layer_curves, o_proj_curves, save_figure
from depthprobe.results import RunDir, load_results
from tests.manifests import synthetic_manifest

MANIFEST = synthetic_manifest()


def store(tmp_path: Path, name: str, rows: list[tuple[str, dict, dict]], **manifest) -> pd.DataFrame:
    run = RunDir(tmp_path / name, {**MANIFEST, **manifest})
    for cid, info, metrics in rows:
        run.write(cid, metrics, **info)
    return load_results(tmp_path / name)


def info(kind, layers, index=None):
    return {
        "kind": kind,
        "layer": min(layers),
        "layer_max": max(layers),
        "index": index,
        "n_interventions": len(layers),
    }


BASE = ("baseline", {"kind": "baseline", "layer": None, "layer_max": None, "index": None, "n_interventions": 0})


def layer_run(tmp_path, name, accs):
    rows = [(BASE[0], BASE[1], {"acc": 0.8, "acc_norm": 0.7})]
    rows += [(f"skip:L{l}", info("skip", [l]), {"acc": a, "acc_norm": a / 2}) for l, a in enumerate(accs)]
    rows += [("skip:L0+skip:L1", info("skip", [0, 1]), {"acc": 0.0, "acc_norm": 0.0})]  # a block: not a curve point
    return store(tmp_path, name, rows, task=name)


def test_layer_curves_plot_the_values(tmp_path: Path) -> None:
    ll = layer_run(tmp_path, "mmlu", [0.25, 0.5, 0.75, 0.6])
    gen = layer_run(tmp_path, "mmlu_generative", [0.1, 0.3, 0.2, 0.9])
    fig = layer_curves({"loglikelihood": ll, "generative": gen}, metrics=("acc", "acc_norm"))
    traces = list(fig.data)
    assert [t.name for t in traces[::2]] == [
        "loglikelihood acc",
        "loglikelihood acc_norm",
        "generative acc",
        "generative acc_norm",
    ]
    for t_abs, t_delta, (df, metric) in zip(
        traces[::2], traces[1::2], [(ll, "acc"), (ll, "acc_norm"), (gen, "acc"), (gen, "acc_norm")]
    ):
        rows = df[(df["kind"] == "skip") & (df["n_interventions"] == 1)].sort_values("layer")
        assert list(t_abs.x) == [0, 1, 2, 3] == list(t_delta.x)
        assert list(t_abs.y) == rows[metric].tolist()
        assert list(t_delta.y) == pytest.approx(
            (rows[metric] - df.loc[df["condition"] == "baseline", metric].iloc[0]).tolist()
        )
    assert list(traces[1].y) == pytest.approx([0.25 - 0.8, 0.5 - 0.8, 0.75 - 0.8, 0.6 - 0.8])
    assert {s.y0 for s in fig.layout.shapes if s.line.dash == "dot"} == {0.8, 0.7}
    with pytest.raises(ValueError, match="missing column"):
        layer_curves(ll, metrics=("exact_match",))


def test_head_attribution_bars_by_group(tmp_path: Path) -> None:
    accs = {(1, h): 0.1 * h for h in range(8)} | {(3, h): 0.05 * h + 0.2 for h in range(8)}
    rows = [(BASE[0], BASE[1], {"acc": 0.9})]
    rows += [(f"head:L{l}H{h}", info("head", [l], h), {"acc": a}) for (l, h), a in accs.items()]
    df = store(tmp_path, "heads", rows)
    fig = head_attribution(df, 3, group_size=2)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert [t.name for t in bars[::2]] == [f"group {g}" for g in range(4)]
    for g, (t_abs, t_delta) in enumerate(zip(bars[::2], bars[1::2])):
        assert list(t_abs.x) == [2 * g, 2 * g + 1] == list(t_delta.x)
        assert list(t_abs.y) == pytest.approx([accs[(3, h)] for h in (2 * g, 2 * g + 1)])
        assert list(t_delta.y) == pytest.approx([accs[(3, h)] - 0.9 for h in (2 * g, 2 * g + 1)])
        assert t_abs.marker.color == t_delta.marker.color
    assert len({t.marker.color for t in bars[::2]}) == 4
    with pytest.raises(ValueError, match=r"no head conditions for layer 5; layers swept: \[1, 3\]"):
        head_attribution(df, 5)

    heat = head_heatmap(df)
    (hm,) = heat.data
    assert list(hm.y) == [1, 3] and list(hm.x) == list(range(8))
    for i, layer in enumerate([1, 3]):
        assert list(hm.z[i]) == pytest.approx([accs[(layer, h)] - 0.9 for h in range(8)])


def test_o_proj_curves(tmp_path: Path) -> None:
    n = 4
    per = [(BASE[0], BASE[1], {"acc": 0.5})] + [
        (f"o_proj:L{l}", info("o_proj", [l]), {"acc": 0.5 + 0.1 * l}) for l in range(n)
    ]
    acc = [(BASE[0], BASE[1], {"acc": 0.5})] + [
        ("+".join(f"o_proj:L{j}" for j in range(k + 1)), info("o_proj", list(range(k + 1))), {"acc": 0.4 - 0.1 * k})
        for k in range(n)
    ]
    rev = [(BASE[0], BASE[1], {"acc": 0.5})] + [
        ("+".join(f"o_proj:L{j}" for j in range(k, n)), info("o_proj", list(range(k, n))), {"acc": 0.05 * k})
        for k in reversed(range(n))
    ]
    frames = {
        "per_layer": store(tmp_path, "p", per),
        "accumulative": store(tmp_path, "a", acc),
        "reverse": store(tmp_path, "r", rev),
    }
    fig = o_proj_curves(frames)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["per_layer"].x) == [0, 1, 2, 3]
    assert list(by_name["per_layer"].y) == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert list(by_name["accumulative"].y) == pytest.approx([0.4, 0.3, 0.2, 0.1])  # x = last patched layer
    assert list(by_name["reverse"].x) == [0, 1, 2, 3]
    assert list(by_name["reverse"].y) == pytest.approx([0.0, 0.05, 0.1, 0.15])  # x = first patched layer
    assert list(by_name["baseline"].y) == [0.5, 0.5]


def test_save_figure_html_always_png_or_one_warning(tmp_path: Path, capfd) -> None:
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0.25, math.pi]))
    written = save_figure(fig, tmp_path / "figs" / "curve")
    html = (tmp_path / "figs" / "curve.html").read_text()
    assert written[0].name == "curve.html"
    assert "3.14159" in html and "plotly.js" in html.lower() and '<script src="http' not in html
    err = capfd.readouterr().err
    if len(written) == 2:
        assert (tmp_path / "figs" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert err.count("\n") == 1 and "PNG not written" in err


def test_error_bars_are_the_paired_intervals(tmp_path: Path) -> None:
    """Every figure draws the delta's paired 95% interval as asymmetric error bars (around the delta and the metric)."""
    from depthprobe.plots import condition_bars

    base = [1, 1, 0, 1, 0, 1]
    per_head = {h: [int(v and (i + h) % 3 != 0) for i, v in enumerate(base)] for h in range(4)}
    run = RunDir(tmp_path / "eb", MANIFEST)
    for cid, values, meta in [("baseline", base, BASE[1])] + [
        (f"head:L{l}H{h}", v, info("head", [l], h)) for l in (0, 1) for h, v in per_head.items()
    ]:
        samples = pd.DataFrame({"doc_id": range(len(values)), "correct": [bool(x) for x in values]})
        run.write(cid, {"acc": sum(values) / len(values)}, samples, **meta)
    df = load_results(tmp_path / "eb")
    rows = df[df["kind"] == "head"]
    assert rows["delta_acc_stderr"].gt(0).all()
    bars = [t for t in head_attribution(df, 1, group_size=2).data if isinstance(t, go.Bar)]
    for t in bars:
        part = rows[(rows["layer"] == 1) & rows["index"].isin(list(t.x))].sort_values("index")
        assert list(t.error_y.array) == pytest.approx((part["delta_acc_ci_high"] - part["delta_acc"]).tolist())
        assert list(t.error_y.arrayminus) == pytest.approx((part["delta_acc"] - part["delta_acc_ci_low"]).tolist())
    (bar,) = condition_bars(df).data
    assert list(bar.x) == rows["condition"].tolist()
    assert list(bar.error_y.array) == pytest.approx((rows["delta_acc_ci_high"] - rows["delta_acc"]).tolist())
    (hm,) = head_heatmap(df).data
    assert hm.text[1][2] == "95% CI [{:+.3f}, {:+.3f}]".format(
        *rows.loc[rows["condition"] == "head:L1H2", ["delta_acc_ci_low", "delta_acc_ci_high"]].iloc[0]
    )
    # without per-document samples there is nothing to draw, and no bar pretends otherwise
    assert (
        head_attribution(
            store(
                tmp_path,
                "nosamples",
                [(BASE[0], BASE[1], {"acc": 0.9}), ("head:L0H0", info("head", [0], 0), {"acc": 0.5})],
            ),
            0,
        )
        .data[0]
        .error_y.array
        is None
    )
