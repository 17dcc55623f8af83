"""``python -m depthprobe``: every user error is one line on stderr with exit status 2; ``--debug`` gives the traceback.

The command line's ``main`` is called in this process (each call loads the bundled
organism-base, about a second); the real-process behaviour (lock, Ctrl-C) is in
``test_rundir_processes.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from depthprobe.__main__ import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def sweep_args(out: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        "--task",
        "organism_knowledge",
        "--grid",
        "blocks:4",
        "--limit",
        "2",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--task", "organism_knowlege"],
            "depthprobe: error: unknown task 'organism_knowlege'; did you mean 'organism_knowledge'? valid: ",
        ),
        (["--grid", "neurons"], "depthprobe: error: unknown grid 'neurons'; valid: layers, heads:L, groups:L"),
        (["--grid", "heads:9"], "depthprobe: error: layer 9 out of range; the model has layers 0..3"),
        (
            ["--limit", "2.5"],
            "depthprobe sweep: error: argument --limit: '2.5' is not a whole number; give a positive integer",
        ),
        (["--limit", "0"], "depthprobe sweep: error: argument --limit: 0 is not positive; give a positive integer"),
        (
            ["--num-fewshot", "99"],
            "depthprobe: error: num_fewshot=99 exceeds the 0 few-shot examples task 'organism_knowledge' has",
        ),
        (
            ["--attn-implementation", "sdpa"],
            "depthprobe: error: attn_implementation applies to the hook-free decoder of generation sweeps",
        ),
        (["--model", "/nonexistent/model"], "depthprobe: error: model directory '/nonexistent/model' does not exist"),
        (
            ["--task", "mmlu", "--data-dir", "/nonexistent/data"],
            "depthprobe: error: data directory '/nonexistent/data' does not exist",
        ),
    ],
)
def test_user_errors_are_one_line_with_status_2(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    code, out, err = run(sweep_args(tmp_path / "runs") + argv, capsys)
    assert code == 2
    assert one_line(err).startswith(message)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_mismatch_and_unwritable_output_are_one_line_and_debug_shows_the_traceback(tmp_path: Path, capsys) -> None:
    code, out, err = run(sweep_args(tmp_path / "runs"), capsys)
    assert code == 0 and "computed 2 condition(s); 0 were already saved in" in out
    code, out, err = run(sweep_args(tmp_path / "runs") + ["--limit", "3"], capsys)
    run_dir = tmp_path / "runs" / "organism-base" / "sweep" / "organism_knowledge" / "blocks_4"
    assert code == 2 and one_line(err) == (
        f"depthprobe: error: {run_dir} holds a run with limit=2, but this command "
        f"has limit=3; use another output directory to keep both"
    )
    assert json.loads((run_dir / "manifest.json").read_text())["limit"] == 2
    code, out, err = run(sweep_args(tmp_path / "runs"), capsys)
    assert code == 0 and "computed 0 condition(s); 2 were already saved" in out

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = run(sweep_args(blocker / "runs"), capsys)
    assert code == 2 and one_line(err).startswith(f"depthprobe: error: not a directory: {blocker}/runs")
    with pytest.raises(NotADirectoryError):
        main(sweep_args(blocker / "runs") + ["--debug"])


def test_attention_implementations_never_share_a_run_directory(tmp_path: Path, capsys) -> None:
    """SDPA rounds differently from eager: the manifest records it and a run with the other one is refused."""
    args = [
        "sweep",
        "--task",
        "organism_reasoning",
        "--grid",
        "blocks:4",
        "--limit",
        "2",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    code, out, err = run(args + ["--attn-implementation", "sdpa"], capsys)
    assert code == 0, err
    run_dir = tmp_path / "organism-base" / "sweep" / "organism_reasoning" / "blocks_4"
    assert (
        json.loads((run_dir / "manifest.json").read_text())["attn_implementation"]
        == "eager (hooks), sdpa (hook-free decoding)"
    )
    code, out, err = run(args, capsys)
    assert code == 2 and "attn_implementation" in one_line(err) and "use another output directory" in err


def test_truncation_is_one_warning_line_and_a_column(tmp_path: Path, capsys) -> None:
    from depthprobe.tiny import make_tiny_model

    from .test_rundir import write_mmlu

    model = make_tiny_model(tmp_path / "short", arch="llama", n_layers=2, seed=0, max_position_embeddings=48)
    data = write_mmlu(tmp_path / "data")
    capsys.readouterr()
    code, out, err = run(
        [
            "sweep",
            "--model",
            str(model),
            "--task",
            "mmlu",
            "--data-dir",
            str(data),
            "--grid",
            "blocks:2",
            "--limit",
            "3",
            "--num-fewshot",
            "5",
            "--out",
            str(tmp_path / "runs"),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0
    assert one_line(err) == (
        "depthprobe: warning: mmlu: 3 of 3 prompts were longer than the model's 48 positions "
        "and were cut from the left; their scores see only the end of the prompt "
        "(n_truncated counts them)"
    )
    header = out.split("==\n", 1)[1].splitlines()[0].split()
    assert header[-1] == "n_truncated" and out.count(" 3\n") >= 2  # baseline and blocks:L0-1 rows show 3


def test_experiment_scripts_share_the_one_line_errors(tmp_path: Path, capsys) -> None:
    from depthprobe import cli

    from .test_experiments import script

    knowledge = script("knowledge")
    with pytest.raises(SystemExit) as stop:
        cli.guard(knowledge.main, ["--limit", "-1", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert one_line(capsys.readouterr().err).endswith(
        "argument --limit: -1 is not positive; give a positive integer (--help lists the options)"
    )
    code = cli.guard(knowledge.main, ["--model", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert code == 2 and one_line(capsys.readouterr().err) == (
        f"depthprobe: error: model directory '{tmp_path / 'none'}' does not exist"
    )
