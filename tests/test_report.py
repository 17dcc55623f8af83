"""The report's pages say what the run directories hold: every number checked against ``load_results``,
every significance mark against scipy's paired t-test, every example generation against the samples;
broken run directories are listed with what is wrong; the site needs nothing from the network.

The campaign (campaigns/organisms.toml at a small limit, 24 sweeps) and its report are built once
per session by ``report_support.organisms_report``, through ``campaign ... --report``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import ttest_rel

from depthprobe.results import RunDir, load_results
from depthprobe.uncertainty import sample_column

pytest.register_assert_rewrite("tests.report_support")  # a plugin of this module (below), imported first
from tests.manifests import synthetic_manifest  # noqa: E402
from tests.report_support import LIMIT, parse_page, table  # noqa: E402

#: The session fixture ``organisms_report`` (the campaign and its report), shared with tests/test_report_browser.py.
pytest_plugins = ["tests.report_support"]

N_SWEEPS = 24  # campaigns/organisms.toml: 2 models x 12 (task, shots, grid) sweeps


def reference_intervals(run_dir: Path, metric: str) -> dict[str, tuple[float, float, float]]:
    """(delta, low, high) of every condition from scipy's paired t-test on the per-document scores."""
    samples = load_results(run_dir, samples=True)
    col = sample_column(metric, samples.columns)
    wide = samples.pivot(index="doc_id", columns="condition", values=col).astype(float)
    out = {}
    for cond in wide.columns:
        if cond == "baseline":
            continue
        with warnings.catch_warnings():  # identical differences: scipy warns, and its interval is [d, d]
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = ttest_rel(wide[cond], wide["baseline"]).confidence_interval(0.95)
        out[cond] = (float((wide[cond] - wide["baseline"]).mean()), float(ci.low), float(ci.high))
    return out


def distinguishable(ref: dict[str, tuple[float, float, float]]) -> list[str]:
    """Conditions whose interval excludes 0, largest |delta| first."""
    sig = [(c, d) for c, (d, lo, hi) in ref.items() if lo > 0 or hi < 0]
    return [c for c, _ in sorted(sig, key=lambda cd: -abs(cd[1]))]


def run_dir_of(report: dict, label: str) -> Path:
    return report["root"] / label


def index_rows(report: dict) -> list[dict]:
    return table(parse_page(report["index"]), "sweeps")


def test_campaign_report_lists_every_sweep(organisms_report: dict) -> None:
    assert organisms_report["stdout"].strip().splitlines()[-1] == f"report: {organisms_report['index'].resolve()}"
    rows = index_rows(organisms_report)
    assert len(rows) == N_SWEEPS
    labels = {r["sweep"]["text"] for r in rows}
    assert labels == {
        p.parent.relative_to(organisms_report["root"]).as_posix()
        for p in organisms_report["root"].rglob("manifest.json")
    }
    for r in rows:
        assert r["status"]["text"] == "ok"
        (href,) = r["sweep"]["links"]
        assert (organisms_report["out"] / href).is_file()
        manifest = json.loads((run_dir_of(organisms_report, r["sweep"]["text"]) / "manifest.json").read_text())
        assert r["_attrs"]["data-task"] == manifest["task"] == r["task"]["text"]
        assert (
            r["_attrs"]["data-protocol"]
            == {"loglikelihood": "log-likelihood", "generate_until": "generation"}[manifest["protocol"]]
        )
        assert r["shots"]["text"] == str(manifest["num_fewshot"])
        assert r["model"]["text"] == Path(manifest["model"]).name
        assert f"limit {LIMIT} of " in r["warnings"]["text"]  # the organisms' tasks have 120-200 documents


def test_index_numbers_and_distinguishable_deltas(organisms_report: dict) -> None:
    for r in index_rows(organisms_report):
        run = run_dir_of(organisms_report, r["sweep"]["text"])
        df = load_results(run)
        metric = r["metric"]["text"]
        assert metric == (
            "acc"
            if "acc" in df.columns
            else "exact_match,strict-match"
            if "exact_match,strict-match" in df.columns
            else "exact_match,first-line"
        )
        base = df.loc[df["condition"] == "baseline", metric].iloc[0]
        assert r["baseline"]["text"] == f"{base:.3f}"
        assert r["n docs"]["text"] == str(LIMIT)
        expected = distinguishable(reference_intervals(run, metric))
        shown = re.findall(r"([a-z_]+:L\d+(?:[HG]\d+)?) [+-]\d", r["largest deltas distinguishable at 95%"]["text"])
        assert shown == expected[:3], (run, shown, expected)
        if len(expected) > 3:
            assert f"+{len(expected) - 3} more" in r["largest deltas distinguishable at 95%"]["text"]


def test_sweep_pages_show_every_condition_with_its_interval(organisms_report: dict) -> None:
    pages = 0
    for r in index_rows(organisms_report):
        run = run_dir_of(organisms_report, r["sweep"]["text"])
        page = parse_page(organisms_report["out"] / r["sweep"]["links"][0])
        rows = table(page, "conditions")
        df = load_results(run)
        metric = r["metric"]["text"]
        ref = reference_intervals(run, metric)
        assert [x["condition"]["text"] for x in rows] == df["condition"].tolist()
        for x, (_, want) in zip(rows, df.iterrows()):
            assert x[metric]["text"] == f"{want[metric]:.3f}"
            if want["condition"] == "baseline":
                continue
            delta, low, high = ref[want["condition"]]
            assert float(x[f"delta {metric}"]["value"]) == pytest.approx(delta, abs=1e-12)
            lo, hi = (float(v) for v in re.findall(r"[+-]\d+\.\d+", x["95% interval"]["text"]))
            assert (lo, hi) == (pytest.approx(low, abs=5e-4), pytest.approx(high, abs=5e-4))
            assert (x["sig."]["text"] == "*") == (low > 0 or high < 0)
            assert x["stderr"]["text"] == f"{want[f'delta_{metric}_stderr']:.3f}"
        manifest = json.loads((run / "manifest.json").read_text())
        text = (organisms_report["out"] / r["sweep"]["links"][0]).read_text()
        for key in ("revision", "git_commit", "identity_digest"):
            assert manifest[key] in text
        assert manifest["data"]["documents"] in text and manifest["versions"]["torch"] in text
        pages += 1
    assert pages == N_SWEEPS


def test_generation_pages_show_baseline_beside_condition(organisms_report: dict) -> None:
    label = "organism-base/organism_reasoning_1shot/layers"
    run = run_dir_of(organisms_report, label)
    samples = load_results(run, samples=True).set_index(["condition", "doc_id"])
    page = parse_page(organisms_report["out"] / "sweeps" / (label.replace("/", "__") + ".html"))
    examples = [t for t in page.tables if "examples" in t["class"]]
    assert examples, "a generation sweep page shows example generations"
    checked = 0
    for t in examples:
        condition = t["header"][3]
        for row in t["rows"]:
            doc = int(re.match(r"\d+", row["cells"][0]["text"]).group())
            base, cond = (samples.loc[(c, doc), "generation"] for c in ("baseline", condition))
            assert base != cond
            assert row["cells"][2]["text"].rstrip(" ✓✗") == " ".join(base.split())
            assert row["cells"][3]["text"].rstrip(" ✓✗") == " ".join(cond.split())
            checked += 1
    assert checked > 0


def test_study_views(organisms_report: dict) -> None:
    page = parse_page(organisms_report["out"] / "study.html")
    html = (organisms_report["out"] / "study.html").read_text()
    traces = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r'<section id="([a-z]+-\d+)"><h3>[^<]*</h3><div class="figure" data-traces="(\d+)"', html)
    }
    kinds = pd.Series({a: a.rsplit("-", 1)[0] for a in traces})
    # per model: the three protocols (one panel each), closed vs open book (2 series x 2 panels);
    # base vs distilled at 0 and 1 shots; heatmaps of the head sweeps (openbook, retrieval, reasoning x 2 shots)
    assert kinds.value_counts().to_dict() == {"protocols": 2, "books": 2, "distilled": 2, "heatmap": 8}
    assert {traces[a] for a in kinds.index[kinds == "protocols"]} == {3}
    assert {traces[a] for a in kinds.index[kinds == "books"]} == {4}
    assert {traces[a] for a in kinds.index[kinds == "distilled"]} == {4}
    assert {traces[a] for a in kinds.index[kinds == "heatmap"]} == {1}
    for link in page.links:
        target = link.split("#")[0]
        assert not target or (organisms_report["out"] / target).is_file(), link
    rows = table(page, "protocol-table")
    assert len(rows) == 2 * 7  # every layer sweep of each model
    for r in rows:
        label = r["task"]["links"][0][len("sweeps/") : -len(".html")].replace("__", "/")
        ref = reference_intervals(organisms_report["root"] / label, r["metric"]["text"])
        want = sorted(int(c.split("L")[1]) for c in distinguishable(ref))
        assert r["distinguishable layers"]["text"] == (", ".join(f"L{v}" for v in want) or "none")


def test_the_site_needs_no_network(organisms_report: dict) -> None:
    out = organisms_report["out"]
    assert [p.name for p in out.rglob("*.js") if "plotly" in p.name] == ["plotly.min.js"]
    pages = list(out.rglob("*.html"))
    assert len(pages) == N_SWEEPS + 2
    for path in pages:
        page = parse_page(path)
        for src in page.scripts + page.links:
            assert not re.match(r"^[a-z]+://|^//", src), (path, src)
            target = src.split("#")[0]
            assert not target or (path.parent / target).resolve().is_file(), (path, src)
        assert path.stat().st_size < 1_000_000  # plotly.js is shipped beside the pages, not inlined in each


def test_broken_run_directories_are_listed_with_what_is_wrong(organisms_report: dict, tmp_path: Path) -> None:
    src = organisms_report["root"] / "organism-base"
    root = tmp_path / "runs"
    cases = {
        "ok": lambda d: None,
        "damaged_manifest": lambda d: (d / "manifest.json").write_text("{not json"),
        "damaged_condition": lambda d: next((d / "conditions").glob("skip_L1-*")).write_text("garbage"),
        "older": lambda d: (d / "manifest.json").write_text(
            json.dumps(
                {k: v for k, v in json.loads((d / "manifest.json").read_text()).items() if k != "identity_digest"}
            )
        ),
        "foreign_condition": lambda d: _edit(next((d / "conditions").glob("skip_L2-*")), run_digest="0" * 64),
        "incomplete": lambda d: [p.unlink() for p in (d / "conditions").glob("skip_L[23]-*")],
        "no_baseline": lambda d: next((d / "conditions").glob("baseline-*")).unlink(),
        "conditions_only": lambda d: (d / "manifest.json").unlink(),
    }
    for name, damage in cases.items():
        shutil.copytree(src / "organism_knowledge" / "layers", root / name)
        damage(root / name)
    from depthprobe.__main__ import main

    out = tmp_path / "report"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["report", str(root), "-o", str(out)]) == 0
    rows = {r["sweep"]["text"]: r for r in table(parse_page(out / "index.html"), "sweeps")}
    status = {k: r["status"]["text"] for k, r in rows.items()}
    assert status == {
        "ok": "ok",
        "damaged_manifest": "damaged",
        "damaged_condition": "damaged",
        "older": "other version",
        "foreign_condition": "other version",
        "incomplete": "incomplete",
        "no_baseline": "incomplete",
        "conditions_only": "incomplete",
    }
    notes = {k: r["warnings"]["text"] for k, r in rows.items()}
    assert "manifest.json cannot be read" in notes["damaged_manifest"]
    assert "skip_L1-" in notes["damaged_condition"] and "is damaged" in notes["damaged_condition"]
    assert "older depthprobe" in notes["older"]
    assert "computed under other settings" in notes["foreign_condition"]
    assert "2 condition(s) of the grid not finished (skip:L2, skip:L3)" in notes["incomplete"]
    assert "no baseline" in notes["no_baseline"]
    assert "no manifest.json" in notes["conditions_only"]
    linked = {k for k, r in rows.items() if r["sweep"]["links"]}
    assert linked == {"ok", "incomplete", "no_baseline"}
    for k in linked:
        assert (out / rows[k]["sweep"]["links"][0]).is_file()
    # a second report into the same directory drops the page of a run directory that is gone, and only it
    shutil.rmtree(root / "ok")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", str(root), "-o", str(out)]) == 0
    assert sorted(p.name for p in (out / "sweeps").iterdir()) == ["incomplete.html", "no_baseline.html"]


def _edit(path: Path, **changes: object) -> None:
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def test_a_root_without_runs_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from depthprobe.__main__ import main

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run directories under" in err
    assert not (tmp_path / "out").exists()


def test_divergence_columns_and_dp_report(tmp_path: Path) -> None:
    """Issue 22's divergence from the baseline's generations: the per-condition ``identical_to_baseline`` and
    ``diverge_at`` metrics, the per-sample median, and the divergence figure."""
    import depthprobe as dp

    manifest = synthetic_manifest(task="organism_reasoning", protocol="generate_until", max_gen_toks=8)
    run = RunDir(tmp_path / "runs" / "gen", manifest)
    gens = {
        "baseline": ["a 1", "b 2", "c 3", "d 4"],
        "skip:L0": ["a 1", "b 9", "x 3", "d 4"],
        "skip:L1": ["q", "b 2", "c 3", "r"],
    }
    diverge = {"baseline": [3, 3, 3, 3], "skip:L0": [3, 2, 0, 3], "skip:L1": [0, 3, 3, 0]}
    for layer, (cond, texts) in enumerate(gens.items(), start=-1):
        same = [t == b for t, b in zip(texts, gens["baseline"])]
        correct = [t[-1:] == str(i + 1) for i, t in enumerate(texts)]
        samples = pd.DataFrame(
            {
                "doc_id": range(4),
                "prompt": [f"Q{i}" for i in range(4)],
                "generation": texts,
                "target": [str(i + 1) for i in range(4)],
                "exact_match,strict-match": correct,
                "identical_to_baseline": same,
                "diverge_at": diverge[cond],
            }
        )
        info = (
            {"kind": "baseline", "layer": None, "layer_max": None, "index": None, "n_interventions": 0}
            if layer < 0
            else {"kind": "skip", "layer": layer, "layer_max": layer, "index": None, "n_interventions": 1}
        )
        run.write(
            cond,
            {
                "exact_match,strict-match": sum(correct) / 4,
                "identical_to_baseline": sum(same) / 4,
                "diverge_at": sum(diverge[cond]) / 4,
            },
            samples,
            n_samples=4,
            **info,
        )
    index = dp.report(tmp_path / "runs", tmp_path / "out")
    assert index == tmp_path / "out" / "index.html"
    page = tmp_path / "out" / "sweeps" / "gen.html"
    rows = {r["condition"]["text"]: r for r in table(parse_page(page), "conditions")}
    assert [rows[c]["identical to baseline"]["text"] for c in gens] == ["1.000", "0.500", "0.500"]
    assert [rows[c]["mean diverge_at"]["text"] for c in gens] == ["3.0", "2.0", "1.5"]
    assert [rows[c]["median diverge_at"]["text"] for c in gens] == ["3.0", "2.5", "1.5"]
    assert rows["baseline"]["exact_match,strict-match"]["text"] == "1.000"
    # the grid's figure, then the divergence figure (no model config here: one colour, 2 panels)
    assert re.findall(r'<div class="figure" data-traces="(\d+)"', page.read_text()) == ["2", "2"]
