"""Wall time of the organisms campaign (campaigns/organisms.toml) in this process and on 1 and 2 Ray workers.

Each configuration runs the whole campaign from scratch into its own temporary root (worker start-up
and model loading included), on a local Ray cluster of ``--cpus`` CPUs started here. Prints one row per
configuration and checks that every configuration stored the same metrics.

    python benchmarks/campaign_workers.py --limit 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--campaign", default=str(REPO / "campaigns" / "organisms.toml"))
    parser.add_argument("--limit", type=int, default=10, help="documents per sweep (the file says 40)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--no-inprocess", action="store_true", help="skip the in-process reference run")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dpbench", dir="/tmp"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_TMPDIR"] = str(tmp / "ray")
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    import ray
    import torch

    import depthprobe as dp
    from depthprobe.campaign import plan_campaign, run_campaign

    torch.set_num_threads(1)
    plan = plan_campaign(args.campaign, root=tmp, limit=args.limit)
    n_conditions = sum(1 + len(dp.sweep.parse_grid(s.model.dims(), s.grid)) for s in plan)
    print(
        f"campaign {Path(args.campaign).name}: {len(plan)} sweeps, {n_conditions} conditions, limit {args.limit}, "
        f"{os.cpu_count()} CPUs on this machine"
    )
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp / "ray"),
        object_store_memory=200 * 1024 * 1024,
    )
    rows, results = [], {}
    configs = ([] if args.no_inprocess else [("in-process", None)]) + [(f"ray x{n}", n) for n in args.workers]
    try:
        for name, n in configs:
            root = tmp / name.replace(" ", "")
            executor = (
                None if n is None else dp.RayExecutor(num_workers=n, num_gpus_per_worker=0, num_cpus_per_worker=1)
            )
            start = time.perf_counter()
            try:
                df = run_campaign(args.campaign, executor=executor, root=root, limit=args.limit, progress=False)
            finally:
                if executor is not None:
                    executor.close()
            wall = time.perf_counter() - start
            rows.append((name, wall, int(df["n_conditions"].sum())))
            results[name] = [dp.load_results(d).drop(columns=["wall_s"]).to_json() for d in df["run_dir"]]
            print(f"{name:12s} {wall:8.1f} s  ({rows[-1][2]} conditions)", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    reference = next(iter(results.values()))
    same = all(r == reference for r in results.values())
    base = next((w for name, w, _ in rows if name == "ray x1"), rows[0][1])
    print("\nconfiguration   wall_s  speed-up vs ray x1")
    for name, wall, _ in rows:
        print(f"{name:12s} {wall:9.1f} {base / wall:8.2f}x")
    print(f"identical metrics and samples in every configuration: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
