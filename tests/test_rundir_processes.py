"""Run directories under real concurrent processes: the lock, settings that may not mix, Ctrl-C.

Each process is ``python -m depthprobe sweep`` on the bundled organism-base (its start-up,
importing torch and transformers, is most of the seconds these tests take).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

RUN = ("organism-base", "sweep", "organism_knowledge", "heads_3")
N_CONDITIONS = 9  # baseline + 8 heads of layer 3


def start(
    out: Path, log: Path, *args: str, task: str = "organism_knowledge", grid: str = "heads:3", limit: int = 4
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "depthprobe",
        "sweep",
        "--model",
        "organism-base",
        "--task",
        task,
        "--grid",
        grid,
        "--limit",
        str(limit),
        "--out",
        str(out),
        "--no-progress",
        "--batch-size",
        "8",
        *args,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    # a shell's background job (`make test &`, nohup) ignores SIGINT, and Python keeps an ignored SIGINT
    # ignored: the child gets the default disposition back, so it reacts to Ctrl-C as in a terminal
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=open(log.with_suffix(".out"), "w"),
        stderr=open(log, "w"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def files(run: Path) -> list[Path]:
    return sorted((run / "conditions").glob("[!.]*.json"))


def test_processes_share_one_run_directory_and_other_settings_are_refused_at_once(tmp_path: Path) -> None:
    """Two processes with the same settings wait for the writer and compute each condition once in all;
    a process with another limit arriving meanwhile is refused at once, and nothing of it is mixed in."""
    out = tmp_path / "runs"
    run = out.joinpath(*RUN)
    run.mkdir(parents=True)
    lock = FileLock(str(run / ".lock"))
    lock.acquire()  # a writer is busy: the test itself, a real second process to the sweeps
    try:
        same = [start(out, tmp_path / f"same{i}.err") for i in range(2)]
        wait_for(lambda: (run / "manifest.json").is_file(), "the first sweep to write its manifest")
        waiting = "another process is writing"
        wait_for(
            lambda: all(waiting in (tmp_path / f"same{i}.err").read_text() for i in range(2)),
            "both sweeps to wait for the lock",
        )
        other = start(out, tmp_path / "other.err", limit=2)
        assert other.wait(timeout=120) == 2  # refused while the writer still holds the directory
        err = (tmp_path / "other.err").read_text().strip().splitlines()
        assert err == [
            f"depthprobe: error: {run} holds a run with limit=4, but this command has limit=2; "
            f"use another output directory to keep both"
        ]
        assert all(p.poll() is None for p in same) and files(run) == []  # still waiting, nothing written
    finally:
        lock.release()
    for p in same:
        assert p.wait(timeout=300) == 0
    outs = [(tmp_path / f"same{i}.out").read_text() for i in range(2)]
    computed = sorted(int(re.search(r"computed (\d+) condition", o).group(1)) for o in outs)
    assert computed == [0, N_CONDITIONS]  # one computed all, the other waited and recomputed none
    assert outs[0].split("computed")[0] == outs[1].split("computed")[0]  # the same table
    assert len(files(run)) == N_CONDITIONS
    assert json.loads((run / "manifest.json").read_text())["limit"] == 4
    assert all(json.loads(f.read_text())["n_samples"] == 4 for f in files(run))


def test_ctrl_c_says_what_is_saved_and_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    run = out / "organism-base" / "sweep" / "organism_reasoning" / "layers"
    # one condition per unit of work (--max-rows = --batch-size), so conditions are saved one by one
    proc = start(out, tmp_path / "sweep.err", "--max-rows", "8", task="organism_reasoning", grid="layers", limit=24)
    wait_for(lambda: len(files(run)) >= 1 or proc.poll() is not None, "the first finished condition")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    saved = len(files(run))
    assert 1 <= saved < 5
    err = (tmp_path / "sweep.err").read_text().strip().splitlines()
    assert err == [
        f"depthprobe: interrupted; {saved} condition(s) are saved in {run}; run the same command again "
        f"to resume (saved conditions are not recomputed)"
    ]
