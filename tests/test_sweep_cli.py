"""``python -m depthprobe sweep``: prints the table with paired intervals and writes its figure under --figures."""

from pathlib import Path

import pytest

import depthprobe as dp
from depthprobe.__main__ import main


def test_sweep_command_writes_figures_and_marks_significance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, figures = tmp_path / "runs", tmp_path / "figs"
    assert (
        main(
            [
                "sweep",
                "--task",
                "organism_knowledge",
                "--grid",
                "heads:1",
                "--limit",
                "6",
                "--out",
                str(out),
                "--figures",
                str(figures),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (figures / "sweep_organism_knowledge_heads_1.html").is_file()
    text = capsys.readouterr().out
    df = dp.load_results(out / "organism-base" / "sweep" / "organism_knowledge" / "heads_1")
    assert "delta_acc_stderr" in text and "95% CI" in text and "paired t-test" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith(("head:", " head:"))}
    for _, row in df[df["kind"] == "head"].iterrows():
        line = lines[row["condition"]]
        distinguishable = row["delta_acc_ci_low"] > 0 or row["delta_acc_ci_high"] < 0
        assert line.rstrip().endswith("*") == distinguishable
        assert f"[{row['delta_acc_ci_low']:+.3f}, {row['delta_acc_ci_high']:+.3f}]" in line


def test_sweep_command_prescreen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    assert (
        main(
            [
                "sweep",
                "--task",
                "organism_knowledge",
                "--grid",
                "heads:all",
                "--limit",
                "4",
                "--out",
                str(out),
                "--no-progress",
                "--prescreen",
                "3,2",
            ]
        )
        == 0
    )
    run = out / "organism-base" / "sweep" / "organism_knowledge" / "heads_all"
    assert (run / "sweep_organism_knowledge_heads_all.html").is_file()  # without --figures: in the run directory
    df = dp.load_results(run)
    assert sorted(df["screen"].dropna()) == ["random", "random", "top", "top", "top"] and len(df) == 6
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["sweep", "--task", "organism_knowledge", "--grid", "heads:all", "--out", str(out), "--prescreen", "x"])
    assert "'x' is not TOP_K or TOP_K,RANDOM_K; give e.g. 10,10" in capsys.readouterr().err
