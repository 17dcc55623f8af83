"""How good is the attribution pre-screen? Estimates of every head against exact zero-ablation.

For organism-base (retrieval, knowledge, reasoning) and the real stories260K (OpenBookQA), every
head of every layer (``heads:all``) and every layer skip is estimated (``atp``; ``ig`` with
``--steps``) and exactly ablated through the sweep engine, on the same metric (logit difference
for multiple choice, log-probability of the reference for generation). Prints per setting:
Spearman of estimate vs exact on the signed mean and on the mean absolute effect, top-5 and
top-10 recall (the screen's top-k by ``estimate_abs`` among the k largest exact effects), the
head with the largest exact effect and its estimate, the number of heads whose exact effect is
distinguishable from zero at 95% but whose estimate has the wrong sign, and the cost of the
screen in forward-equivalents (a backward counted as two forwards) against the exact sweep's.

    python benchmarks/attribution_vs_exact.py --limit 40
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import depthprobe as dp
from depthprobe.attribution import attribute, exact_effects
from depthprobe.sweep import parse_grid

SHARED = Path(os.environ.get("DEPTHPROBE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SETTINGS = [
    ("organism-base", "organism_retrieval", {}),
    ("organism-base", "organism_knowledge", {}),
    ("organism-base", "organism_reasoning", {}),
    ("stories260K", "openbookqa", {"data_dir": str(SHARED / "data")}),
]


def spearman(a: pd.Series, b: pd.Series) -> float:
    return float(a.rank().corr(b.rank()))  # Pearson on ranks: Spearman's rho


def top_recall(df: pd.DataFrame, k: int) -> float:
    est = set(df.sort_values("estimate_abs", ascending=False)["condition"].head(k))
    exact = set(df.sort_values("exact_abs", ascending=False)["condition"].head(k))
    return len(est & exact) / k


def engine_cost(model: torch.nn.Module, grid: str) -> float:
    """Forward-equivalents of the exact sweep through the engine: the baseline plus each condition's tail of layers."""
    n = dp.model_dims(model).n_layers
    return 1.0 + sum(
        (n - min(iv.layer for iv in c) - sum(iv.kind == "skip" for iv in c)) / n for c in parse_grid(model, grid)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=40, help="documents per task (default 40)")
    parser.add_argument("--steps", type=int, default=5, help="integration points per layer for ig (default 5)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    models: dict[str, torch.nn.Module] = {}
    for name, task, options in SETTINGS:
        path = SHARED / "models" / "stories260K" if name == "stories260K" else name
        if name == "stories260K" and not (Path(path) / "config.json").is_file():
            print(f"skip {name}: {path} is absent", file=sys.stderr)
            continue
        model = models.setdefault(name, dp.load_model(path))
        for grid in ("heads:all", "layers"):
            start = time.perf_counter()
            exact = exact_effects(model, task, grid, limit=args.limit, batch_size=args.batch_size, **options)
            t_exact = time.perf_counter() - start
            for method in ("atp", "ig"):
                start = time.perf_counter()
                est = attribute(
                    model,
                    task,
                    grid,
                    method=method,
                    steps=args.steps if method == "ig" else None,
                    limit=args.limit,
                    batch_size=args.batch_size,
                    **options,
                )
                t_est = time.perf_counter() - start
                df = est.merge(exact, on=["condition", "n"])
                big = df.loc[df["exact_abs"].idxmax()]
                distinguishable = df["exact"].abs() > 1.96 * df["exact_stderr"]
                wrong_sign = int((distinguishable & (df["exact"] * df["estimate"] < 0)).sum())
                rows.append(
                    {
                        "model": name,
                        "task": task,
                        "grid": grid,
                        "method": method,
                        "metric": est.attrs["metric"],
                        "n_cond": len(df),
                        "rho_signed": spearman(df["estimate"], df["exact"]),
                        "rho_abs": spearman(df["estimate_abs"], df["exact_abs"]),
                        "top5": top_recall(df, 5) if len(df) >= 10 else float("nan"),
                        "top10": top_recall(df, 10) if len(df) >= 20 else float("nan"),
                        "largest": big["condition"],
                        "exact": big["exact"],
                        "estimate": big["estimate"],
                        "wrong_sign": f"{wrong_sign}/{int(distinguishable.sum())}",
                        "cost_screen": est.attrs["forward_equivalents"],
                        "cost_exact": float(len(df) + 1),
                        "cost_engine": engine_cost(model, grid),
                        "s_screen": t_est,
                        "s_exact": t_exact,
                    }
                )
                print(f"{name} {task} {grid} {method}: done", file=sys.stderr)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    print(f"attribution vs exact ablation, {args.limit} documents per task, ig with {args.steps} steps per layer")
    print("rho: Spearman of estimate vs exact (signed mean; mean absolute). topk: recall of the exact top-k among")
    print("the screen's top-k by estimate_abs. wrong_sign: heads whose exact delta is distinguishable from 0 at 95%")
    print("but whose estimate has the other sign. cost: forward-equivalents over the documents (backward = 2)")
    print("for the screen, the naive exact sweep (one forward per condition) and the engine's tail-only sweep.")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
