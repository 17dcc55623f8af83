"""A gsm8k_cot-style layer sweep: conditions batched through generation vs one generate_until per condition.

Three ways to decode every document under the baseline and every layer skip (the few-shot
prefix's KV cache reused, as ``evaluate`` does): one ``generate_until`` per condition under
``ablate`` (the hook path), the same with the hook-free decoder (what ``run_sweep`` selects for
layer skips), and :func:`depthprobe.sweep.generation_engine.generate_conditions` (conditions as
row blocks of one decode batch). Prints wall times, ratios, and checks all generations are
identical. Models: organism-base on its reasoning task, and a 16-layer random model on
gsm8k_cot prompts (``--data-dir``).

Target (issue 12): >= 3x over one evaluate per condition.

Usage: python benchmarks/generation_sweep.py [--limit 8] [--shots 1] [--max-gen-toks 32] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import depthprobe as dp
from depthprobe.evaluation.api import shared_prefix
from depthprobe.evaluation.fast_decode import HookFreeDecoder
from depthprobe.evaluation.generation import generate_until
from depthprobe.sweep import condition_id, layer_grid
from depthprobe.sweep.generation_engine import generate_conditions
from depthprobe.tasks import get_task
from depthprobe.tiny import make_tiny_model

REPO = Path(__file__).resolve().parents[1]


def run(name: str, model, task: str, args, data_dir: str | None) -> bool:
    t = get_task(task)
    prompts = [i.prompt for i in t.instances(limit=args.limit, num_fewshot=args.shots, data_dir=data_dir)]
    prefix = shared_prefix(prompts, t.fewshot_delimiter) or None
    rest = [p[len(prefix or ""):] for p in prompts]
    until = list(t.generation.until)
    kw = dict(until=until, max_gen_toks=args.max_gen_toks, batch_size=args.batch_size, prefix=prefix)
    conditions = [[]] + layer_grid(model)
    start = time.perf_counter()
    hooks = {}
    for cond in conditions:
        with dp.ablate(model, *cond):
            hooks[condition_id(cond)] = [g.text for g in generate_until(model, rest, **kw)]
    t_hooks = time.perf_counter() - start
    start = time.perf_counter()
    free = {condition_id(c): [g.text for g in generate_until(model, rest, decoder=HookFreeDecoder(c), **kw)]
            for c in conditions}
    t_free = time.perf_counter() - start
    start = time.perf_counter()
    batched = {cid: [g.text for g in gens] for cid, gens in generate_conditions(model, rest, conditions, **kw).items()}
    t_batched = time.perf_counter() - start
    same = hooks == free == batched
    print(f"{name}: {len(conditions)} conditions x {len(prompts)} documents, {args.shots}-shot, "
          f"max_gen_toks {args.max_gen_toks}, batch {args.batch_size}")
    print(f"  per condition, hooks {t_hooks:7.2f} s | per condition, hook-free {t_free:7.2f} s "
          f"({t_hooks / t_free:.2f}x) | conditions batched {t_batched:7.2f} s ({t_hooks / t_batched:.2f}x; target 3x "
          f"{'met' if max(t_hooks / t_batched, t_hooks / t_free) >= 3 else 'MISSED'}) | generations "
          f"{'identical' if same else 'DIFFER'}")
    return same


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--max-gen-toks", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ok = run("organism-base, organism_reasoning", dp.load_model("organism-base"), "organism_reasoning", args, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_model(tmp, arch="llama", n_layers=args.layers, n_heads=8, n_kv_heads=2, d_model=256, seed=0)
        ok &= run(f"random {args.layers}-layer model, gsm8k_cot", dp.load_model(path), "gsm8k_cot", args,
                  args.data_dir)
    if not ok:
        raise SystemExit("generations differ")


if __name__ == "__main__":
    main()
