"""RayExecutor on a real local Ray cluster (2 CPUs, 2 logical GPUs): every run directory it writes must equal
the in-process one, condition for condition and sample for sample, also when a worker or the driver is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import depthprobe as dp
from depthprobe.results import IDENTITY_KEYS
from tests.bridges import bridge

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
LL_KW = dict(limit=4, batch_size=4, progress=False)
GEN_KW = dict(limit=4, batch_size=4, max_gen_toks=16, progress=False)


@pytest.fixture(scope="module")
def executor(ray_executor):
    return ray_executor


@pytest.fixture(scope="module")
def many_local(tiny_qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The in-process run of _many_conditions(), the reference of the fault tests."""
    out = tmp_path_factory.mktemp("many") / "local"
    dp.run_sweep(bridge(tiny_qwen3_dir), "organism_openbook", _many_conditions(), out_dir=out, chunk=1, **LL_KW)
    return out


def _files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "conditions").glob("[!.]*.json"))


def _same_run(ray_dir: Path, local_dir: Path, metrics: list[str], sample_cols: list[str]) -> None:
    """Same manifest identity, same conditions once each, same metrics and per-sample values."""
    a = json.loads((ray_dir / "manifest.json").read_text())
    b = json.loads((local_dir / "manifest.json").read_text())
    assert {k: a.get(k) for k in IDENTITY_KEYS} == {k: b.get(k) for k in IDENTITY_KEYS}
    remote, local = dp.load_results(ray_dir), dp.load_results(local_dir)
    assert list(remote["condition"]) == list(local["condition"])
    assert remote["condition"].is_unique and len(_files(ray_dir)) == len(remote)
    for m in metrics:
        assert list(remote[m]) == list(local[m]), m
    rs, ls = dp.load_results(ray_dir, samples=True), dp.load_results(local_dir, samples=True)
    for col in ["condition", "doc_id", *sample_cols]:
        assert list(rs[col]) == list(ls[col]), col


def test_loglikelihood_sweep_equals_in_process(executor, tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    spec = dp.ModelSpec(tiny_qwen3_dir, device="cpu")
    local = dp.run_sweep(
        bridge(tiny_qwen3_dir), "organism_openbook", "heads:1", out_dir=tmp_path / "local", chunk=2, **LL_KW
    )
    remote = dp.run_sweep(
        spec, "organism_openbook", "heads:1", out_dir=tmp_path / "ray", chunk=2, executor=executor, **LL_KW
    )
    assert list(remote["condition"]) == ["baseline"] + [f"head:L1H{h}" for h in range(4)]
    _same_run(
        tmp_path / "ray",
        tmp_path / "local",
        ["acc", "acc_norm", "acc_token_norm"],
        ["loglikelihoods", "is_greedy", "prediction"],
    )
    ls = dp.load_results(tmp_path / "local", samples=True)
    assert (
        ls[ls["condition"] == "head:L1H2"]["loglikelihoods"].tolist()
        != ls[ls["condition"] == "baseline"]["loglikelihoods"].tolist()
    )  # the conditions really differ
    workers = executor.workers()
    assert len({w["pid"] for w in workers}) == 2 and all(w["model"] == str(spec) for w in workers)
    # resuming sends nothing to the workers; a loaded model is described for them by its path
    units = executor.stats["units"]
    dp.run_sweep(
        bridge(tiny_qwen3_dir),
        "organism_openbook",
        "heads:1",
        out_dir=tmp_path / "ray",
        chunk=2,
        executor=executor,
        **LL_KW,
    )
    assert executor.stats["units"] == units


def test_gpu_placement_each_worker_its_own_device(executor, tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    dp.run_sweep(
        dp.ModelSpec(tiny_qwen3_dir, device="cpu"),
        "organism_openbook",
        [[dp.skip_layer(0)]],
        out_dir=tmp_path / "run",
        chunk=1,
        executor=executor,
        **LL_KW,
    )
    workers = executor.workers()
    devices = sorted(w["cuda_visible_devices"] for w in workers)
    assert devices == ["0", "1"]
    assert all(w["gpu_ids"] == [w["cuda_visible_devices"]] for w in workers)
    assert executor.worker_device() == "cuda"  # a spec without device goes to the workers' GPUs


def test_generation_sweep_equals_in_process(executor, tmp_path: Path) -> None:
    conditions = [[dp.skip_layer(3)], [dp.zero_head(3, 5)]]
    local = dp.run_sweep(
        bridge(Path(dp.list_models()["organism-base"])),
        "organism_reasoning",
        conditions,
        out_dir=tmp_path / "local",
        **GEN_KW,
    )
    shards = executor.stats["shards"]
    dp.run_sweep(
        dp.ModelSpec("organism-base", device="cpu"),
        "organism_reasoning",
        conditions,
        out_dir=tmp_path / "ray",
        executor=executor,
        **GEN_KW,
    )
    assert executor.stats["shards"] == shards  # 3 conditions on 2 workers: whole conditions
    _same_run(
        tmp_path / "ray",
        tmp_path / "local",
        ["exact_match,strict-match", "exact_match,flexible-extract"],
        ["generation", "exact_match", "n_generated_tokens"],
    )
    gens = dp.load_results(tmp_path / "local", samples=True).groupby("condition")["generation"].apply(list)
    assert gens["skip:L3"] != gens["baseline"] != gens["head:L3H5"]  # the conditions really differ


def test_generation_with_fewer_conditions_than_workers_is_sharded(executor, tmp_path: Path) -> None:
    local = dp.run_sweep(
        bridge(Path(dp.list_models()["organism-base"])), "organism_reasoning", [], out_dir=tmp_path / "local", **GEN_KW
    )
    shards = executor.stats["shards"]
    dp.run_sweep(
        dp.ModelSpec("organism-base", device="cpu"),
        "organism_reasoning",
        [],
        out_dir=tmp_path / "ray",
        executor=executor,
        **GEN_KW,
    )
    assert executor.stats["shards"] == shards + 2  # the baseline in two document shards, merged once
    _same_run(
        tmp_path / "ray",
        tmp_path / "local",
        ["exact_match,strict-match", "exact_match_stderr,strict-match"],
        ["generation", "exact_match", "n_generated_tokens", "prompt"],
    )
    assert len(local) == 1


def _many_conditions() -> list[list[dp.Intervention]]:
    return [[dp.skip_layer(layer)] for layer in range(3)] + [[dp.zero_head(2, h)] for h in range(4)]


def test_a_worker_killed_mid_run_loses_and_doubles_nothing(
    executor, many_local: Path, tiny_qwen3_dir: Path, tmp_path: Path
) -> None:
    conditions = _many_conditions()
    local = dp.load_results(many_local)
    run_dir = tmp_path / "ray"
    spec = dp.ModelSpec(tiny_qwen3_dir, device="cpu")
    before = {w["pid"] for w in executor.workers()}
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            dp.run_sweep(spec, "organism_openbook", conditions, out_dir=run_dir, chunk=1, executor=executor, **LL_KW)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    thread = threading.Thread(target=sweep)
    thread.start()
    deadline = time.time() + 60
    while len(_files(run_dir)) < 2 and time.time() < deadline and thread.is_alive():
        time.sleep(0.01)
    victim = executor.workers()[0]["pid"]
    done_at_kill = len(_files(run_dir))
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive() and not errors, errors
    assert victim in before and done_at_kill < len(local)  # killed mid-run, while units were in flight
    after = {w["pid"] for w in executor.workers()}
    assert victim not in after and len(after) == 2  # Ray restarted the actor in a new process
    assert after - before, "the restarted worker ran units"
    _same_run(run_dir, many_local, ["acc", "acc_norm"], ["loglikelihoods"])


_DRIVER = """
import sys, depthprobe as dp
ex = dp.RayExecutor(address=sys.argv[1], num_workers=1, num_gpus_per_worker=0)
conditions = [[dp.skip_layer(l)] for l in range(3)] + [[dp.zero_head(2, h)] for h in range(4)]
dp.run_sweep(dp.ModelSpec(sys.argv[2], device="cpu"), "organism_openbook", conditions, out_dir=sys.argv[3],
             chunk=1, limit=4, batch_size=4, progress=False, executor=ex)
print("finished")
"""


def test_a_killed_driver_resumes_to_the_in_process_result(
    executor, ray_cluster, many_local: Path, tiny_qwen3_dir: Path, tmp_path: Path
) -> None:
    conditions = _many_conditions()
    local = dp.load_results(many_local)
    run_dir = tmp_path / "ray"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, ray_cluster, str(tiny_qwen3_dir), str(run_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 90
    while len(_files(run_dir)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    done = len(_files(run_dir))
    assert 3 <= done < len(local), output[-2000:]  # killed mid-run, with work stored
    assert not list((run_dir / "conditions").glob(".*tmp"))  # nothing half written is left looking complete
    units = executor.stats["units"]
    dp.run_sweep(
        dp.ModelSpec(tiny_qwen3_dir, device="cpu"),
        "organism_openbook",
        conditions,
        out_dir=run_dir,
        chunk=1,
        executor=executor,
        **LL_KW,
    )
    assert executor.stats["units"] - units == len(local) - done  # only what was missing was run
    _same_run(run_dir, many_local, ["acc", "acc_norm"], ["loglikelihoods"])
