"""The GPU check's CPU rehearsal (benchmarks/device_check.py --tiny) passes every check and writes its report;
and depthprobe runs a sweep with the optional extras the GPU image lacks (plotly, lm-eval, ray, wonderwords,
kaleido) absent."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import depthprobe as dp

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

#: The checks of part 1 for each random model (architecture x dtype).
PER_MODEL = [
    "build random model",
    "bridge logits = HF logits",
    "every intervention kind = weight surgery",
    "hook-free decoding = hook path",
    "batched conditions = per-condition decoding",
    "multiple-choice engine = naive forward",
]


def _ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def test_cpu_rehearsal_passes_every_check(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "device_check.py"),
            "--tiny",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = tmp_path / "device_check.json"
    bad = [r for r in json.loads(report.read_text())["records"] if not r["passed"]] if report.exists() else None
    assert run.returncode == 0, f"records not passed: {bad}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    doc = json.loads(report.read_text())
    assert set(doc) == {"meta", "summary", "records"}
    assert doc["meta"]["shapes"] == "tiny" and doc["meta"]["versions"]["transformer-lens"]
    records = doc["records"]
    for r in records:
        assert set(r) == {"part", "name", "status", "passed", "seconds", "figures"}, r
    parts = [r["part"] for r in records]
    assert parts == sorted(parts, key=["correctness", "throughput", "projections"].index), "parts out of order"
    by_name = {r["name"]: r for r in records}
    draft = "draft" in inspect.signature(dp.run_sweep).parameters
    expected = [
        f"{arch} {dtype}: {check}"
        for arch in ("llama", "qwen3")
        for dtype in ("bfloat16", "float32")
        for check in PER_MODEL
    ]
    expected += [
        "llama bfloat16: sweep run directory resumes",
        "Ray with one GPU worker",
        "llama bfloat16: generation verified against baseline = plain decoding",
        "llama float32: generation verified against baseline = plain decoding",
        "decoding: HF generate (eager)",
        "decoding: depthprobe hook path",
        "decoding: depthprobe hook-free (eager)",
        "decoding: depthprobe hook-free (sdpa)",
        "decoding: batched conditions",
        "sweep end to end (run_sweep, batched conditions)",
        "sweep verified against baseline (draft)",
        "one batched multiple-choice engine step (every layer skip)",
        "GPU memory peak",
        "GSM8K 8-shot CoT layer sweep",
        "MMLU 3-protocol layer sweep",
        "reasoning-heads sweep of one layer (96 conditions)",
        "study.toml on one GPU",
        "study.toml on 8 GPUs through Ray",
    ]
    assert not set(expected) - set(by_name), f"missing checks: {sorted(set(expected) - set(by_name))}"
    for r in records:
        if "verified against baseline" in r["name"] and not draft:
            assert r["status"] == "not available" and r["passed"] is None, r
        elif r["name"] == "Ray with one GPU worker" and not _ray_installed():
            assert r["status"] == "not run" and r["passed"] is None, r
        else:
            assert r["status"] == "passed" and r["passed"] is True, r
    surgery = by_name["llama float32: every intervention kind = weight surgery"]["figures"]
    assert not surgery["kinds_without_surgery"] and surgery["kinds_checked"] >= 9
    assert by_name["llama float32: hook-free decoding = hook path"]["figures"]["compared"] > 0
    for r in records:
        if r["part"] == "projections":
            assert r["figures"]["seconds"] > 0 and r["figures"]["assumptions"]
    md = (tmp_path / "device_check.md").read_text()
    for heading in ("# Device check", "## correctness", "## throughput", "## projections", "Assumptions:"):
        assert heading in md
    assert md.count("| passed |") == sum(r["status"] == "passed" for r in records)


ABSENT = r"""
import json, sys
from pathlib import Path

BLOCKED = {"plotly", "lm_eval", "ray", "wonderwords", "kaleido"}


class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Absent())
import tempfile

import depthprobe as dp
from depthprobe.organisms import CHECKPOINTS_DIR

sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
import device_correctness

model = dp.load_model(CHECKPOINTS_DIR / "organism-base")
with tempfile.TemporaryDirectory() as d:
    mc = dp.run_sweep(model, "organism_knowledge", "layers", out_dir=d + "/mc", limit=4, progress=False)
    gen = dp.run_sweep(model, "organism_reasoning", "layers", out_dir=d + "/gen", limit=2, max_gen_toks=8,
                       progress=False)
    gen_tokens = int(dp.load_results(d + "/gen", samples=True)["n_generated_tokens"].sum())
    ray = device_correctness.ray_one_gpu_worker("cpu", Path(d))
try:
    import plotly  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
print(json.dumps({"n_layers": model.cfg.n_layers, "mc": mc["condition"].tolist(), "gen": gen["condition"].tolist(),
                  "gen_tokens": gen_tokens, "acc": bool(mc["acc"].notna().all()),
                  "exact_match": [c for c in gen.columns if c.startswith("exact_match")], "ray": ray,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED), "plotly_blocked": blocked}))
"""


def test_a_sweep_runs_without_the_extras_the_gpu_image_lacks() -> None:
    run = subprocess.run(
        [sys.executable, "-c", ABSENT, str(REPO)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["plotly_blocked"] and out["loaded"] == []
    assert len(out["mc"]) == len(out["gen"]) == out["n_layers"] + 1 and out["acc"] and out["exact_match"]
    assert out["gen_tokens"] > 0
    assert out["ray"]["status"] == "not run" and out["ray"]["passed"] is None
