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
    return (f"torch {torch.__version__}: CPU kernels {torch.backends.cpu.get_cpu_capability()} "
            f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'native')}), {THREADS} thread(s)")


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
    return request.getfixturevalue({"llama": "tiny_llama_dir", "qwen3": "tiny_qwen3_dir",
                                    "stories260K": "stories_dir"}[request.param])
