"""The experiment scripts: thin compositions that stop early on bad input and write what they say."""

import importlib.util
from pathlib import Path

import pytest

import depthprobe as dp

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name,argv",
    [
        ("reasoning_heads", ["--layer", "35"]),
        ("retrieval_heads", ["--layers", "1", "10"]),
    ],
)
def test_layer_outside_the_model_stops_with_the_valid_range(name: str, argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"outside the model: it has layers 0\.\.3"):
        script(name).main(argv + ["--out", str(tmp_path)])


def test_knowledge_sweep_writes_results_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, figures = tmp_path / "runs", tmp_path / "figures"
    assert (
        script("knowledge").main(["--limit", "4", "--out", str(out), "--figures", str(figures), "--no-progress"]) == 0
    )
    df = dp.load_results(out / "organism-base" / "knowledge" / "organism_knowledge")
    assert list(df["condition"]) == ["baseline"] + [f"skip:L{layer}" for layer in range(4)]
    expected = dp.evaluate(dp.load_model("organism-base"), "organism_knowledge", limit=4).metrics["acc"]
    assert df.loc[df["condition"] == "baseline", "acc"].item() == expected
    assert (figures / "knowledge_organism_knowledge.html").is_file()
    assert "== organism_knowledge ==" in capsys.readouterr().out
    # resuming: a second run evaluates nothing new and returns the same table
    assert (
        script("knowledge").main(["--limit", "4", "--out", str(out), "--figures", str(figures), "--no-progress"]) == 0
    )
    assert dp.load_results(out / "organism-base" / "knowledge" / "organism_knowledge").equals(df)
