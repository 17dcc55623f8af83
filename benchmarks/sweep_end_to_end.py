"""End to end: ``run_sweep`` (the multiple-choice engine with context reuse) vs one ``evaluate`` per condition.

OpenBookQA (48 documents, batch 16) on a 16-layer random Llama GQA model (d_model 256, CPU,
float32): the layer-skip sweep and the per-head sweep of the last layer, each with the
baseline. Prints wall times, the ratio, and checks every condition's predictions are identical
and its log-likelihoods agree (<= 1e-5).

Targets (issue 12): layer sweep >= 1.8x, last-layer head sweep >= 4.5x.

Usage: python benchmarks/sweep_end_to_end.py [--limit 48] [--batch-size 16] [--layers 16] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from random_model import add_shape_flags, random_llama

import depthprobe as dp
from depthprobe.sweep import condition_id, head_grid, layer_grid

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="openbookqa")
    p.add_argument("--limit", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    add_shape_flags(p)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with random_llama(args) as path:
        model = dp.load_model(path, dtype=torch.float32, device="cpu")
        L = args.layers
        print(
            f"{args.task}: {args.limit} documents, batch {args.batch_size}; model {L} layers, d_model "
            f"{args.d_model}, {args.heads} heads ({args.kv_heads} KV), {torch.get_num_threads()} thread(s)"
        )
        common = dict(limit=args.limit, batch_size=args.batch_size, data_dir=args.data_dir)
        dp.evaluate(model, args.task, **{**common, "limit": 4})  # warm-up (data, tokenizer)
        ok = True
        for name, grid, conditions, target in (
            ("layer sweep", "layers", [[]] + layer_grid(model), 1.8),
            (f"head sweep, layer {L - 1}", f"heads:{L - 1}", [[]] + head_grid(model, L - 1), 4.5),
        ):
            start = time.perf_counter()
            naive = {}
            for cond in conditions:
                with dp.ablate(model, *cond):
                    naive[condition_id(cond)] = dp.evaluate(model, args.task, **common).samples
            t_naive = time.perf_counter() - start
            start = time.perf_counter()
            out = path.parent / grid.replace(":", "_")  # beside the model, in its temporary directory
            dp.run_sweep(model, args.task, grid, out_dir=out, progress=False, **common)
            t_engine = time.perf_counter() - start
            samples = dp.load_results(out, samples=True)
            diff, same = 0.0, True
            for cid, ref in naive.items():
                got = samples[samples["condition"] == cid].sort_values("doc_id")
                ref = ref.sort_values("doc_id")
                same &= list(got["prediction"]) == list(ref["prediction"])
                diff = max(
                    diff,
                    max(abs(a - b) for x, y in zip(got["loglikelihoods"], ref["loglikelihoods"]) for a, b in zip(x, y)),
                )
            ok &= same and diff <= 1e-5
            ratio = t_naive / t_engine
            print(
                f"{name}: {len(conditions)} conditions | evaluate per condition {t_naive:.2f} s | run_sweep "
                f"{t_engine:.2f} s | {ratio:.2f}x (target {target}x: {'met' if ratio >= target else 'MISSED'}) | "
                f"predictions {'identical' if same else 'DIFFER'}, max |ll diff| {diff:.1e}"
            )
        if not ok:
            raise SystemExit("run_sweep differs from evaluate per condition")


if __name__ == "__main__":
    main()
