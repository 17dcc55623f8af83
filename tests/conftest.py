"""Shared fixtures: tiny random checkpoints built offline, and the real data and model in ../shared."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jaxtyping._typeguard  # noqa: F401  (the checker named in pytest's --jaxtyping-packages must be importable)
import pytest
import torch

from depthprobe.tiny import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEPTHPROBE_SHARED", REPO.parent / "shared"))
STORIES = SHARED / "models" / "stories260K"
DATA = SHARED / "data"

#: Torch threads for the suite: 2 (or the CPUs there are), or $DEPTHPROBE_TEST_THREADS (CI runs 1 and 2).
THREADS = int(os.environ.get("DEPTHPROBE_TEST_THREADS") or max(1, min(2, os.cpu_count() or 1)))
torch.set_num_threads(THREADS)


def pytest_report_header(config: pytest.Config) -> str:
    """Say which CPU kernel set and thread count the numbers were computed with (tests/tolerance.py)."""
    return (
        f"torch {torch.__version__}: CPU kernels {torch.backends.cpu.get_cpu_capability()} "
        f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'native')}), {THREADS} thread(s)"
    )


# The weight-digest cache (depthprobe.hashing) goes to a temporary folder, never the user's ~/.cache;
# subprocesses started by tests inherit it.
os.environ["DEPTHPROBE_CACHE_DIR"] = tempfile.mkdtemp(prefix="depthprobe-cache-")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_llama"), arch="llama", n_layers=3, seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen3"), arch="qwen3", n_layers=3, seed=0)


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    if not (STORIES / "config.json").is_file():
        pytest.skip(f"the real stories260K model is absent ({STORIES})")
    return STORIES


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"the real benchmark data is absent ({DATA})")
    return DATA


@pytest.fixture(scope="session", params=["llama", "qwen3", "stories260K"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    """Each model every intervention is proven on: tiny random Llama, tiny random Qwen3, real stories260K."""
    return request.getfixturevalue(
        {"llama": "tiny_llama_dir", "qwen3": "tiny_qwen3_dir", "stories260K": "stories_dir"}[request.param]
    )


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the session: 2 CPUs and 2 (logical) GPUs, workers importing this checkout.

    Ray 2.59+ would write an auth token under ~/.ray and a session under /tmp/ray: both are
    redirected (``RAY_AUTH_MODE=disabled``, a private ``RAY_TMPDIR``, short enough for Ray's sockets).
    """
    ray = pytest.importorskip("ray")
    import shutil
    import tempfile

    saved = dict(os.environ)
    tmp = tempfile.mkdtemp(prefix="dpray", dir="/tmp")
    os.environ.update(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_TMPDIR": tmp,
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *filter(None, [saved.get("PYTHONPATH")])]),
        }
    )
    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 1024 * 1024,
        _temp_dir=tmp,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_executor(ray_cluster):
    """Two Ray workers shared by the session's Ray tests: half a CPU and one (logical) GPU each, so one
    CPU stays free for a second driver's worker."""
    import depthprobe as dp

    ex = dp.RayExecutor(num_workers=2, num_gpus_per_worker=1, num_cpus_per_worker=0.5)
    yield ex
    ex.close()
