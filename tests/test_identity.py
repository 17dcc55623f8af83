"""Weights edited in memory after ``load_model`` are another model (depthprobe.identity, issue 25).

``load_model`` records an exact fingerprint of the parameters it loaded; a model's identity says
``weights=None`` while its parameters are still those bits, and their live fingerprint once they
changed. A run directory begun with the checkpoint's weights is then refused to an edited model
(one line naming ``weights``), and resumed by a reloaded one or one built from a ``ModelSpec``.
The fingerprint is exact integer arithmetic, checked here against a NumPy reference and across
CPU kernel sets in subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import depthprobe as dp
from depthprobe import hashing
from depthprobe.identity import model_identity, spec_identity_mismatch
from depthprobe.model_spec import as_model_spec
from depthprobe.models import loaded_fingerprint
from depthprobe.organisms import CHECKPOINTS_DIR
from depthprobe.results import ManifestMismatchError
from depthprobe.sweep import run_sweep

ORGANISM = CHECKPOINTS_DIR / "organism-base"
REPO = Path(__file__).resolve().parents[1]


def sweep(model, out: Path, **kw):
    return run_sweep(
        model, "organism_knowledge", [[dp.skip_layer(0)]], out_dir=out, limit=2, batch_size=4, progress=False, **kw
    )


def o_proj(model) -> torch.Tensor:
    return model.blocks[3].attn.o.original_component.weight


def next_up(x: torch.Tensor) -> torch.Tensor:
    """The next representable value above ``x`` (one ulp): the smallest edit there is."""
    return torch.nextafter(x, torch.full_like(x, float("inf")))


def test_an_in_memory_edit_is_refused_and_a_reload_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = dp.load_model(ORGANISM)
    first = sweep(model, run)
    assert json.loads((run / "manifest.json").read_text())["weights"] is None
    files = sorted(p.name for p in (run / "conditions").iterdir())
    w = o_proj(model)
    saved = w[5, 7].clone()
    with torch.no_grad():
        w[5, 7] = next_up(saved)  # one weight, one ulp, in place, after load_model
    edited = model_identity(model)["weights"]
    assert edited is not None and edited.startswith("live-")
    with pytest.raises(ManifestMismatchError) as err:
        sweep(model, run)
    message = str(err.value)
    assert "\n" not in message
    assert f"holds a run with weights=None, but this command has weights={edited!r}" in message
    assert sorted(p.name for p in (run / "conditions").iterdir()) == files  # nothing written
    # the edited model is a run of its own, recorded with its live fingerprint
    other = sweep(model, tmp_path / "edited")
    assert json.loads((tmp_path / "edited" / "manifest.json").read_text())["weights"] == edited
    assert other.attrs["computed"] == ["baseline", "skip:L0"]
    # the identity follows the bits, not a flag: restoring the weight restores the identity
    with torch.no_grad():
        w[5, 7] = saved
    assert model_identity(model)["weights"] is None
    assert sweep(model, run).attrs["computed"] == []
    # a fresh load of the same checkpoint resumes the run directory: nothing is recomputed
    again = sweep(dp.load_model(ORGANISM), run)
    assert again.attrs["computed"] == [] and list(again["acc"]) == list(first["acc"])


def test_a_spec_run_is_resumed_by_the_loaded_model_but_not_by_an_edited_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    spec = dp.ModelSpec(ORGANISM, device="cpu")
    assert spec.identity()["weights"] is None
    sweep(spec, run)
    model = dp.load_model(spec)
    assert sweep(model, run).attrs["computed"] == []
    fresh = model_identity(model)
    with torch.no_grad():
        o_proj(model).mul_(0.5)
    with pytest.raises(ManifestMismatchError, match=r"weights=None, but this command has weights='live-"):
        sweep(model, run)
    # an executor's workers load the checkpoint from disk: an edited driver model cannot be shipped
    with pytest.raises(ValueError, match=r"weights changed in memory after load_model .* reload the model"):
        as_model_spec(model)
    assert spec_identity_mismatch(model_identity(model), fresh).startswith(
        "weights=None where the run expects weights='live-"
    )
    assert spec_identity_mismatch(spec.identity(), fresh) is None


def test_every_single_value_edit_changes_the_fingerprint_and_its_cost_on_the_organism() -> None:
    start = time.perf_counter()
    model = dp.load_model(ORGANISM)
    load_s = time.perf_counter() - start
    named = list(model.named_parameters())
    times = []
    for _ in range(5):
        start = time.perf_counter()
        live = hashing.parameters_fingerprint(named)
        times.append(time.perf_counter() - start)
    assert live == loaded_fingerprint(model)
    for name, p in named:  # one ulp of the last value of each tensor in turn, then put back
        flat = p.detach().view(-1)
        saved = flat[-1].clone()
        with torch.no_grad():
            flat[-1] = next_up(saved)
        assert hashing.parameters_fingerprint(named) != live, name
        with torch.no_grad():
            flat[-1] = saved
    assert hashing.parameters_fingerprint(named) == live
    n = sum(p.numel() for _, p in named)
    print(
        f"\norganism-base, {n} float32 parameters in {len(named)} tensors, {torch.get_num_threads()} threads: "
        f"parameters_fingerprint {min(times) * 1e3:.2f} ms (best of 5), load_model {load_s * 1e3:.0f} ms"
    )


def _reference(name: str, tensor: torch.Tensor) -> str:
    """The fingerprint of one tensor recomputed with NumPy and Python integers from the documented recipe."""
    word = {1: "u1", 2: "<i2", 4: "<i4"}[tensor.element_size()]
    raw = tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    words = np.frombuffer(raw, dtype=word).astype(object)
    sums, rows = [], [words[i : i + hashing._ROW] for i in range(0, max(len(words), 1), hashing._ROW)]
    for row in rows:
        mult = []
        for i in range(len(row)):
            h = (i * 0x5BD1E995 + 0x2545F491) & 0x7FFFFFFF
            h ^= h >> 15
            h = (h * 0x2C1B3C6D) & 0x7FFFFFFF
            h ^= h >> 13
            mult.append((h & 0x7FFF) | 1)
        sums.append(int(sum(int(w) * m for w, m in zip(row, mult))))
    digest = hashlib.sha256(b"depthprobe-parameters-v1")
    digest.update(f"{name}|{str(tensor.dtype).replace('torch.', '')}|{tuple(tensor.shape)}\n".encode())
    digest.update(np.array(sums, dtype="<i8").tobytes())
    return "live-" + digest.hexdigest()[:32]


@pytest.mark.parametrize(
    "dtype,shape",
    [(torch.float32, (3, 5)), (torch.bfloat16, (70_001,)), (torch.float16, (2, 2)), (torch.float32, (0,))],
)
def test_the_fingerprint_equals_an_exact_integer_reference(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 50).to(dtype)
    assert hashing.parameters_fingerprint([("w", tensor)]) == _reference("w", tensor)


_PROBE = """
import json, torch, depthprobe as dp
from depthprobe.models import loaded_fingerprint
torch.set_num_threads(2)
out = {"capability": torch.backends.cpu.get_cpu_capability()}
for dtype in ("float32", "bfloat16"):
    out[dtype] = loaded_fingerprint(dp.load_model("organism-base", dtype=dtype, device="cpu"))
print(json.dumps(out))
"""


def _probe(capability: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability is not None:
        env["ATEN_CPU_CAPABILITY"] = capability
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_fingerprint_is_the_same_on_every_cpu_kernel_set() -> None:
    native, default = _probe(None), _probe("default")
    if native["capability"] == default["capability"]:
        pytest.skip(f"this CPU offers only the {native['capability']} kernels")
    assert default["capability"] == "DEFAULT"
    assert native["float32"] == default["float32"] and native["bfloat16"] == default["bfloat16"]
    assert native["float32"] != native["bfloat16"]
