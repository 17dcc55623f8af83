"""The GPU check as one prepared command: correctness on the device, throughput at 8B scale, projections.

Runs three parts, in this order, and rewrites ``device_check.json`` and ``device_check.md`` in
``--out`` after every check, so a run cut off by its time limit still returns what it finished:

1. **correctness** on random models of the Llama-3.1-8B and Qwen3-8B shapes (full width, 3
   layers), in bfloat16 and float32 (``device_correctness.py``): bridge logits = Hugging Face
   logits; every intervention kind = weight surgery; hook-free decoding and batched conditions =
   the hook path; the multiple-choice engine = a naive forward; a run directory resumes;
   generation verified against the baseline = plain decoding (when ``run_sweep`` has ``draft=``);
   Ray with one GPU worker (when ray is installed);
2. **throughput** on the full 32-layer Llama-3.1-8B shape in bfloat16, batch sizes planned to fit
   78 GiB (``gpu_sweep.py``'s decoders and engine step, ``run_sweep`` end to end), GPU memory peak;
3. **projections** of the study's sweeps from part 2's rates, each with its assumptions
   (``device_scale.py``, which also plans part 2's batch sizes; the report: ``device_report.py``).

Every record has ``passed`` (true, false, or null for a check not run here) and its figures.
``--budget-s`` stops starting checks once that much time has gone since the command started, the
install included (they are recorded as skipped), so it ends inside the device call's limit;
``--parts`` reruns a subset.
``--wheelhouse DIR`` first installs DIR's wheels (``make wheelhouse``) with pip into
``/tmp/site`` and re-runs itself with it on ``PYTHONPATH``. Nothing is downloaded.

GPU machine (docs/gpu.md): PYTHONUNBUFFERED=1 python3 benchmarks/device_check.py --wheelhouse .whl --out $OUT
CPU rehearsal (about a minute):  .venv/bin/python benchmarks/device_check.py --tiny --device cpu --out /tmp/dc
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from device_report import GIB, REPO, Report, _free, metadata

SITE = "/tmp/site"


def bootstrap(wheelhouse: str) -> None:
    """Install the wheelhouse into SITE (no index, no dependencies) and re-run this command with it on the path."""
    if os.environ.get("DEVICE_CHECK_SITE") == SITE:
        return
    wheels = sorted(glob.glob(os.path.join(wheelhouse, "*.whl")))
    if not wheels:
        sys.exit(f"no wheels in {wheelhouse!r}: run `make wheelhouse` on the machine that prepares the call")
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--upgrade",
            "--target",
            SITE,
            *wheels,
        ],
        check=True,
    )
    path = os.pathsep.join(filter(None, [SITE, os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "DEVICE_CHECK_SITE": SITE,
        "DEVICE_CHECK_INSTALL_S": f"{time.perf_counter() - start:.1f}",
    }
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


# --- part 1 -----------------------------------------------------------------------------------


def correctness(args: argparse.Namespace, report: Report, tmp: Path) -> None:
    import device_correctness as dc
    import torch

    for arch in ("llama", "qwen3"):
        for dtype in (torch.bfloat16, torch.float32):
            label = f"{arch} {str(dtype).replace('torch.', '')}"
            pair = _build(args, report, arch, dtype, tmp / label, label)
            if pair is not None:
                _model_checks(args, report, label, *pair, tmp / label)
            del pair
            _free()
    report.check("correctness", "Ray with one GPU worker", lambda: dc.ray_one_gpu_worker(args.device, tmp), needs_s=30)


def _build(args: argparse.Namespace, report: Report, arch: str, dtype: Any, tmp: Path, label: str) -> tuple | None:
    """A random model of ``arch``'s shape (full width, 3 layers) and its Hugging Face reference copy."""
    from gpu_sweep import random_model

    built: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        built["pair"] = random_model(
            arch, tiny=args.tiny, device=args.device, dtype=dtype, tmp=tmp, n_layers=3, reference=True
        )
        cfg = built["pair"][0].cfg
        return {"passed": True, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "d_vocab": cfg.d_vocab}

    report.check("correctness", f"{label}: build random model", build, needs_s=20)
    return built.get("pair")


def _model_checks(args: argparse.Namespace, report: Report, label: str, model: Any, ref: Any, tmp: Path) -> None:
    import device_correctness as dc
    import torch

    report.check("correctness", f"{label}: bridge logits = HF logits", lambda: dc.bridge_logits(model, ref))
    report.check(
        "correctness",
        f"{label}: every intervention kind = weight surgery",
        lambda: dc.interventions_vs_surgery(model, ref),
    )
    decoded: dict[str, Any] = {}

    def hook_free() -> dict[str, Any]:
        decoded["free"], decoded["block"] = dc.decoding(model, new_tokens=6 if args.tiny else 12)
        return decoded["free"]

    report.check("correctness", f"{label}: hook-free decoding = hook path", hook_free)
    if decoded:
        report.add("correctness", f"{label}: batched conditions = per-condition decoding", decoded["block"], 0.0)
    report.check("correctness", f"{label}: multiple-choice engine = naive forward", lambda: dc.mc_engine(model))
    if label.startswith("llama"):
        if next(model.parameters()).dtype == torch.bfloat16:
            report.check("correctness", f"{label}: sweep run directory resumes", lambda: dc.sweep_resumes(model, tmp))
        report.check(
            "correctness",
            f"{label}: generation verified against baseline = plain decoding",
            lambda: dc.draft_vs_plain(model, tmp, 6 if args.tiny else 12),
        )


# --- parts 2 and 3 ----------------------------------------------------------------------------


def throughput(args: argparse.Namespace, report: Report, tmp: Path) -> dict[str, Any]:
    import inspect

    import device_scale as ds
    import gpu_sweep as gs
    import torch

    import depthprobe as dp

    gib = 78.0 if args.device.startswith("cuda") else 0.0
    sizes = ds.plan_sizes(args.tiny, gib)
    found: dict[str, Any] = {"decoding": {}, "sizes": sizes}
    built: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        built["model"] = gs.random_model(
            "llama",
            tiny=args.tiny,
            device=args.device,
            dtype=torch.bfloat16,
            tmp=tmp / "llama-32",
            n_layers=sizes["n_layers"],
        )[0]
        return {"passed": True, **sizes}

    if report.check("throughput", "build the 32-layer Llama-3.1-8B shape (bfloat16)", build, needs_s=40) is None:
        return found
    if not built:
        return found
    model = built["model"]
    conds = gs.spread_conditions(model, sizes["conditions"])
    ids = gs.random_ids(model, sizes["prompts"], sizes["prompt_tokens"])
    runs = gs.iter_decode_runs(model, ids, sizes["new_tokens"], sdpa=True, block_conditions=conds, device=args.device)
    while True:
        if report.left() < 20:
            report.add("throughput", "decoding: the remaining decoders", {"status": "skipped", "note": "budget"}, 0.0)
            break
        start = time.perf_counter()
        try:
            name, figures = next(runs)
        except StopIteration:
            break
        except Exception as err:  # noqa: BLE001
            report.add(
                "throughput",
                "decoding",
                {"status": "error", "passed": False, "error": repr(err)[:500]},
                time.perf_counter() - start,
            )
            _free()
            break
        found["decoding"][name] = figures
        report.add("throughput", f"decoding: {name}", {"passed": True, **figures}, figures["seconds"])
    report.check(
        "throughput",
        "sweep end to end (run_sweep, batched conditions)",
        lambda: ds.sweep_rate(model, tmp, sizes, conds, draft=False),
        needs_s=20,
    )
    if "draft" in inspect.signature(dp.run_sweep).parameters:
        report.check(
            "throughput",
            "sweep verified against baseline (draft)",
            lambda: ds.sweep_rate(model, tmp, sizes, conds, draft=True),
            needs_s=20,
        )
    else:
        report.add(
            "throughput",
            "sweep verified against baseline (draft)",
            {"status": "not available", "note": "run_sweep has no draft= parameter (issue 22)"},
            0.0,
        )

    def mc() -> dict[str, Any]:
        found["mc"] = gs.mc_step(model, sizes["mc_docs"], sizes["mc_tokens"], sizes["mc_rows"], args.device)
        return {"passed": True, **found["mc"]}

    report.check("throughput", "one batched multiple-choice engine step (every layer skip)", mc, needs_s=20)

    def memory() -> dict[str, Any]:
        if not args.device.startswith("cuda"):
            import resource

            return {"passed": True, "process_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        runs = {
            **{k: v["peak_gib"] for k, v in found["decoding"].items()},
            "engine step": found.get("mc", {}).get("peak_gib"),
        }
        name, peak = max(((k, v) for k, v in runs.items() if v is not None), key=lambda kv: kv[1])
        return {  # the sizes were planned for an H100: the peak must fit 78 GiB on any card
            "passed": peak <= 78.0,
            "peak_allocated_gib": peak,
            "peak_run": name,
            "per_run_gib": runs,
            "device_total_gib": torch.cuda.get_device_properties(0).total_memory / GIB,
        }

    report.check("throughput", "GPU memory peak", memory, needs_s=0)
    return found


def projections(args: argparse.Namespace, report: Report, found: dict[str, Any]) -> None:
    import device_scale as ds
    import gpu_sweep as gs

    if not found.get("decoding") or "mc" not in found:
        report.add("projections", "projections", {"status": "not run", "note": "part 2 measured no rates"}, 0.0)
        return
    r = gs.rates(found["decoding"], found["sizes"]["new_tokens"], found["mc"])
    note = " (tiny CPU rates: exercises the arithmetic, projects nothing)" if args.tiny else ""
    for proj in gs.projections(r) + ds.heads_sweep(r) + ds.campaign(r, REPO / "campaigns" / "study.toml"):
        figures = {k: v for k, v in proj.items() if k != "name"}
        figures["human"] = gs.fmt(proj["seconds"])
        figures["assumptions"] = proj["assumptions"] + note
        report.check("projections", proj["name"], lambda f=figures: {"passed": True, **f}, needs_s=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for device_check.json and device_check.md")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU rehearsal)")
    p.add_argument("--device", default=None, help="cuda (default when there is one) or cpu")
    p.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 2,3")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no check after this many seconds (default 360 on the GPU, 170 with --tiny)",
    )
    p.add_argument("--wheelhouse", default=None, help="install these wheels into /tmp/site first (the GPU machine)")
    args = p.parse_args(argv)
    if args.wheelhouse:
        bootstrap(args.wheelhouse)
    sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import tempfile

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        torch.set_num_threads(1)  # tiny shapes gain nothing from threads, and lose much on a shared CPU
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 checks are float32, not TF32
        torch.backends.cudnn.allow_tf32 = False
    budget = args.budget_s if args.budget_s is not None else (170.0 if args.tiny else 360.0)
    parts = {int(x) for x in args.parts.split(",")}
    report = Report(Path(args.out), metadata(args), budget)
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="device_check") as tmp:
        if 1 in parts:
            correctness(args, report, Path(tmp))
        if 2 in parts:
            found = throughput(args, report, Path(tmp))
        if 3 in parts:
            projections(args, report, found)
    report.write()
    bad = [r["name"] for r in report.records if r["status"] in ("failed", "error")]
    print(
        f"device check: {len(report.records)} records, {len(bad)} failed; wall {report.meta['wall_s']} s; "
        f"results in {args.out}/device_check.json and .md",
        flush=True,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
