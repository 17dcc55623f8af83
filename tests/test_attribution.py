"""Attribution estimates against independent references: finite differences of the same linearisation,
the sum over a group's heads, and (integrated gradients) exact ablation through the sweep engine."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import depthprobe as dp
from depthprobe.attribution import Prescreen, attribute, exact_effects
from depthprobe.interventions import Intervention
from depthprobe.interventions.base import Bound
from depthprobe.sweep import parse_grid, score_conditions

TASK, LIMIT = "organism_knowledge", 3
# Central differences at EPS and EPS/2, Richardson-extrapolated (truncation error O(EPS^4)); much smaller
# steps would meet the float32 rounding inside the bridge (eager attention's softmax runs in float32).
EPS = 2e-2


@pytest.fixture(scope="module")
def model64(tiny_llama_dir: Path) -> torch.nn.Module:
    """float64, so central differences are accurate to ~1e-8 and the comparison tests the estimate, not rounding."""
    return dp.load_model(tiny_llama_dir, dtype=torch.float64)


@dataclass(frozen=True)
class Scale(Intervention):
    """Test-only intervention type (not registered): multiply activations by ``factor``.

    ``what``: ``"z"`` scales the ``hook_z`` slices of query heads ``units``, ``"v"`` the
    ``hook_v`` slices of KV heads ``units``, ``"layer"`` the attention and MLP outputs.
    """

    what: str = "z"
    units: tuple[int, ...] = ()
    factor: float = 1.0
    tag: str = "s"
    kind = "scale"

    @property
    def id(self) -> str:
        return f"{self.tag}:L{self.layer}{self.units}x{self.factor}"

    def _make_hooks(self, model, dims) -> Bound:
        def scale_slices(t, hook):
            t = t.clone()
            t[:, :, list(self.units)] *= self.factor
            return t

        def scale_all(t, hook):
            return t * self.factor

        names = {
            "z": [f"blocks.{self.layer}.attn.hook_z"],
            "v": [f"blocks.{self.layer}.attn.hook_v"],
            "layer": [f"blocks.{self.layer}.hook_attn_out", f"blocks.{self.layer}.hook_mlp_out"],
        }[self.what]
        fn = scale_all if self.what == "layer" else scale_slices
        return Bound(self, tuple((name, fn) for name in names))


def scale_heads(layer: int, heads: tuple[int, ...], factor: float, name: str) -> Intervention:
    return Scale(layer, "z", tuple(heads), factor, name)


def scale_values(layer: int, group: int, factor: float) -> Intervention:
    return Scale(layer, "v", (group,), factor, "v")


def scale_layer(layer: int, factor: float) -> Intervention:
    return Scale(layer, "layer", (), factor, "layer")


def logit_diffs(model, conditions) -> dict[str, np.ndarray]:
    """Per-document gold-minus-best-distractor log-likelihood, scored by the sweep engine (lm-eval's windows)."""
    instances = dp.get_task(TASK).instances(limit=LIMIT)
    scores = score_conditions(model, [(i.prompt, i.continuations) for i in instances], conditions, batch_size=4)
    out = {}
    for cid, docs in scores.items():
        out[cid] = np.array(
            [
                s.loglikelihoods[i.target] - max(x for j, x in enumerate(s.loglikelihoods) if j != i.target)
                for s, i in zip(docs, instances)
            ]
        )
    return out


def finite_differences(model, makers: dict) -> dict[str, np.ndarray]:
    """Per-document -(dM/dscale) at scale 1 by central differences: the linearised zero-ablation delta."""
    steps = (EPS, EPS / 2)
    pairs = {(key, h): (make(1 + h), make(1 - h)) for key, make in makers.items() for h in steps}
    m = logit_diffs(model, [[iv] for pair in pairs.values() for iv in pair])
    fd = {k: -(m[plus.id] - m[minus.id]) / (2 * k[1]) for k, (plus, minus) in pairs.items()}
    return {key: (4 * fd[(key, steps[1])] - fd[(key, steps[0])]) / 3 for key in makers}


def test_head_and_layer_estimates_equal_finite_differences(model64) -> None:
    heads = attribute(model64, TASK, "heads:all", limit=LIMIT, batch_size=4).set_index("condition")
    layers = attribute(model64, TASK, "layers", limit=LIMIT, batch_size=5).set_index("condition")
    assert list(heads.index) == [f"head:L{l}H{h}" for l in range(3) for h in range(4)]
    assert (heads["n"] == LIMIT).all() and heads.attrs["forward_equivalents"] == 3.0
    picked = [(0, 1), (1, 2), (2, 0), (2, 3)]
    makers = {f"head:L{l}H{h}": (lambda f, l=l, h=h: scale_heads(l, (h,), f, "h")) for l, h in picked}
    makers |= {f"skip:L{l}": (lambda f, l=l: scale_layer(l, f)) for l in range(3)}
    fd = finite_differences(model64, makers)
    for l, h in picked:
        cid = f"head:L{l}H{h}"
        assert abs(fd[cid].mean()) > 1e-2  # a head that matters, so the relative check means something
        assert heads.loc[cid, "estimate"] == pytest.approx(fd[cid].mean(), rel=1e-3)
        assert heads.loc[cid, "estimate_abs"] == pytest.approx(np.abs(fd[cid]).mean(), rel=1e-3)
    for l in range(3):
        assert layers.loc[f"skip:L{l}", "estimate"] == pytest.approx(fd[f"skip:L{l}"].mean(), rel=1e-3)


def test_group_estimate_is_the_sum_of_its_heads(model64) -> None:
    dims = dp.model_dims(model64)
    heads = attribute(model64, TASK, "heads:1", limit=LIMIT).set_index("condition")["estimate"]
    groups = attribute(model64, TASK, "groups:1", limit=LIMIT).set_index("condition")
    r = dims.group_size
    assert r == 2
    # the group's own linearisation: scaling its shared values scales exactly its heads' z
    fd = finite_differences(model64, {g: (lambda f, g=g: scale_values(1, g, f)) for g in range(dims.n_kv_heads)})
    for g in range(dims.n_kv_heads):
        total = sum(heads[f"head:L1H{h}"] for h in range(g * r, (g + 1) * r))
        assert groups.loc[f"group:L1G{g}", "estimate"] == pytest.approx(total, rel=1e-9, abs=1e-12)
        assert groups.loc[f"group:L1G{g}", "estimate"] == pytest.approx(fd[g].mean(), rel=1e-3)


def test_integrated_gradients_converge_to_exact_ablation(model64) -> None:
    """Completeness: a layer's heads sum to zeroing them all, and a layer skip's IG is its exact delta.

    (Layer 0 is left out: along its path the best distractor switches, a kink in dM/dalpha that
    the midpoint rule only resolves slowly: 2.93, 3.10, 2.63, 2.62 at 6, 12, 24, 48 steps for an exact 2.61.)
    """
    skips = [[dp.skip_layer(1)], [dp.skip_layer(2)]]
    exact = exact_effects(model64, TASK, [[dp.skip_attn(1)]] + skips, limit=LIMIT).set_index("condition")["exact"]
    heads = attribute(model64, TASK, "heads:1", method="ig", steps=16, limit=LIMIT)
    layers = attribute(model64, TASK, skips, method="ig", steps=16, limit=LIMIT).set_index("condition")
    assert heads.attrs["forward_equivalents"] == 3 * 16 + 1
    assert heads["estimate"].sum() == pytest.approx(exact["skip_attn:L1"], rel=3e-3)
    for layer in (1, 2):
        assert layers.loc[f"skip:L{layer}", "estimate"] == pytest.approx(exact[f"skip:L{layer}"], rel=3e-3)
    # the linear estimate is not exact (else this test could not tell the two methods apart)
    atp = attribute(model64, TASK, skips, limit=LIMIT).set_index("condition")
    assert atp.loc["skip:L1", "estimate"] != pytest.approx(exact["skip:L1"], rel=3e-2)


def test_heads_all_grid_and_errors(tiny_llama_dir: Path) -> None:
    model = dp.load_model(tiny_llama_dir)
    assert [c[0].id for c in parse_grid(model, "heads:all")] == [f"head:L{l}H{h}" for l in range(3) for h in range(4)]
    with pytest.raises(ValueError, match="unknown attribution method 'shap'; valid: atp, ig"):
        attribute(model, TASK, "layers", method="shap", limit=1)
    with pytest.raises(ValueError, match="steps= applies to method='ig' only"):
        attribute(model, TASK, "layers", steps=3, limit=1)
    with pytest.raises(ValueError, match="cannot attribute condition 'head_weights:L1H0'"):
        attribute(model, TASK, "head_weights:1", limit=1)
    with pytest.raises(ValueError, match="metric 'logprob' does not fit task 'organism_knowledge'"):
        attribute(model, TASK, "layers", metric="logprob", limit=1)
    with pytest.raises(ValueError, match="Prescreen.top_k must be a non-negative int"):
        Prescreen(top_k=-1)


def test_prescreen_measures_exactly_the_selection_and_recall_comes_from_it(model64, tmp_path: Path) -> None:
    model = model64  # float64: the stored exact deltas and the reference below agree to rounding (~1e-14)
    screen = Prescreen(top_k=3, random_k=2, seed=1)
    run = tmp_path / "run"
    df = dp.run_sweep(model, TASK, "heads:all", out_dir=run, limit=LIMIT, prescreen=screen, progress=False)
    # the selection, recomputed independently: the 3 largest estimate_abs, then 2 of the other 9
    est = attribute(model, TASK, "heads:all", limit=LIMIT).sort_values("estimate_abs", ascending=False)
    top = est["condition"].head(3).tolist()
    files = sorted(json.loads(p.read_text())["condition"] for p in (run / "conditions").glob("*.json"))
    assert len(files) == 1 + 3 + 2 and set(top) <= set(files) and "baseline" in files
    assert sorted(df["condition"]) == files
    rows = df[df["condition"] != "baseline"].set_index("condition")
    assert sorted(rows.index[rows["screen"] == "top"]) == sorted(top)
    randoms = rows.index[rows["screen"] == "random"].tolist()
    assert len(randoms) == 2 and not set(randoms) & set(top)
    assert rows.loc[top, "estimate"].tolist() == pytest.approx(est.set_index("condition").loc[top, "estimate"].tolist())
    # the exact columns are real ablations: the engine's per-document logit differences, by hand
    conds = [[]] + [[dp.zero_head(*map(int, re.findall(r"\d+", cid)))] for cid in rows.index]
    m = logit_diffs(model, conds)
    for cid in rows.index:
        d = m[cid] - m["baseline"]
        assert rows.loc[cid, "exact"] == pytest.approx(d.mean(), rel=1e-9, abs=1e-9)
        assert rows.loc[cid, "exact_abs"] == pytest.approx(np.abs(d).mean(), rel=1e-9, abs=1e-9)
    # and so are the task metrics: one condition evaluated on its own under ablate
    with dp.ablate(model, *conds[1]):
        ref = dp.evaluate(model, TASK, limit=LIMIT)
    assert rows.loc[conds[1][0].id, "acc"] == ref.metrics["acc"]
    # recall from the measured rows: of the 3 largest exact effects measured, how many the screen ranked top
    truth = rows.sort_values("exact_abs", ascending=False).index[:3]
    report = df.attrs["prescreen"]
    assert report["recall"] == len(set(truth) & set(top)) / 3
    truth_acc = (
        rows.assign(a=rows["delta_acc"].abs()).sort_values(["a", "condition"], ascending=[False, True]).index[:3]
    )
    assert report["recall_acc"] == len(set(truth_acc) & set(top)) / 3
    assert (report["n_measured"], report["n_top"], report["n_random"]) == (5, 3, 2)
    # resuming measures nothing again; other screen settings are refused
    stamps = {p: p.stat().st_mtime_ns for p in (run / "conditions").iterdir()}
    again = dp.run_sweep(model, TASK, "heads:all", out_dir=run, limit=LIMIT, prescreen=screen, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (run / "conditions").iterdir()} == stamps
    assert again.attrs["prescreen"] == report
    with pytest.raises(ValueError, match="was pre-screened with"):
        dp.run_sweep(model, TASK, "heads:all", out_dir=run, limit=LIMIT, prescreen=Prescreen(top_k=4), progress=False)
