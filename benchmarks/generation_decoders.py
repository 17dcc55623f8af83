"""The decoders of a generation sweep: conditions batched through generation vs one generate_until per condition.

(Every token decoded, ``draft=None``: how the decoders compare; ``benchmarks/generation_sweep.py``
measures verification against the baseline, ``run_sweep``'s default.) A gsm8k_cot-style layer sweep:

Every document under the baseline and every layer skip, the few-shot prefix's KV cache reused
(as ``evaluate`` does), decoded five ways:

- one ``generate_until`` per condition under ``ablate`` (the hook path: what one ``evaluate``
  per condition costs, the baseline of the ratios);
- one per condition with the hook-free decoder (exact weight edits on the plain model);
- :func:`depthprobe.engine.generation.generate_conditions` with ``draft=None`` (every token decoded):
  conditions as row blocks of each decode batch, the prefix and prompts computed unablated once
  below each condition's first edited layer;
- the last two again with SDPA attention (``attn_implementation="sdpa"``: faster, rounds
  differently from eager, so compared with each other);
- batched (eager) with ended rows kept in the running batch to the end (``compact`` off), to show
  what dropping them saves; with the rows computed (``Decoded.row_steps``) of both.

Prints wall times and ratios, and checks the eager generations are identical across the first
three ways and the SDPA ones across the last two. Models: organism-base on its reasoning task,
and a 16-layer random model on gsm8k_cot prompts (``--data-dir``).

Target (issue 12): >= 3x over one evaluate per condition.

Usage: python benchmarks/generation_decoders.py [--limit 16] [--shots 1] [--max-gen-toks 32] [--batch-size 8]
       [--models organism random]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import depthprobe as dp
from depthprobe.engine.generation import HookedBlockDecoder, generate_conditions
from depthprobe.evaluation.decode import LoopDecoder
from depthprobe.evaluation.fast_decode import BlockDecoder, HookFreeDecoder
from depthprobe.evaluation.generation import generate_until
from depthprobe.evaluator import shared_prefix
from depthprobe.sweep import condition_id, layer_grid
from depthprobe.tasks import get_task
from depthprobe.tiny import make_tiny_model

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def counted(rows: list[int], *, compact: bool = True) -> Iterator[None]:
    """Add every decode call's computed rows (``Decoded.row_steps``) to ``rows``; ``compact=False`` keeps ended rows
    (in both batched decoders)."""
    call, flags = LoopDecoder.__call__, {cls: cls.compact for cls in (BlockDecoder, HookedBlockDecoder)}

    def counting(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = call(self, *args, **kwargs)
        rows.append(out.row_steps)
        return out

    LoopDecoder.__call__ = counting
    for cls in flags:
        cls.compact = compact
    try:
        yield
    finally:
        LoopDecoder.__call__ = call
        for cls, flag in flags.items():
            cls.compact = flag


def run(name: str, model, task: str, args, data_dir: str | None) -> bool:
    t = get_task(task)
    prompts = [i.prompt for i in t.instances(limit=args.limit, num_fewshot=args.shots, data_dir=data_dir)]
    prefix = shared_prefix(prompts, t.fewshot_delimiter) or None
    rest = [p[len(prefix or "") :] for p in prompts]
    kw = dict(until=list(t.generation.until), max_gen_toks=args.max_gen_toks, batch_size=args.batch_size, prefix=prefix)
    conditions = [[]] + layer_grid(model)

    def hooks():
        out = {}
        for cond in conditions:
            with dp.ablate(model, *cond):
                out[condition_id(cond)] = [g.text for g in generate_until(model, rest, **kw)]
        return out

    def hook_free(impl):
        return lambda: {
            condition_id(c): [
                g.text for g in generate_until(model, rest, decoder=HookFreeDecoder(c, attn_implementation=impl), **kw)
            ]
            for c in conditions
        }

    row_steps: dict[str, list[int]] = {"compact": [], "kept": []}

    def batched(impl, counter=None, compact=True):
        def fn():
            with counted(row_steps[counter] if counter else [], compact=compact):
                return {
                    cid: [g.text for g in gens]
                    for cid, gens in generate_conditions(
                        model, rest, conditions, max_rows=args.max_rows, attn_implementation=impl, draft=None, **kw
                    ).items()
                }

        return fn

    ways = {
        "per condition, hooks": hooks,
        "per condition, hook-free": hook_free(None),
        "conditions batched": batched(None, "compact"),
        "per condition, hook-free, sdpa": hook_free("sdpa"),
        "conditions batched, sdpa": batched("sdpa"),
        "batched, ended rows kept": batched(None, "kept", compact=False),
    }
    times, texts = {}, {}
    for way, fn in ways.items():
        start = time.perf_counter()
        texts[way] = fn()
        times[way] = time.perf_counter() - start
    eager = (
        texts["per condition, hooks"]
        == texts["per condition, hook-free"]
        == texts["conditions batched"]
        == texts["batched, ended rows kept"]
    )
    sdpa = texts["per condition, hook-free, sdpa"] == texts["conditions batched, sdpa"]
    ref, fast = texts["per condition, hooks"], texts["conditions batched, sdpa"]
    differ = sum(a != b for cid in ref for a, b in zip(ref[cid], fast[cid]))
    print(
        f"{name}: {len(conditions)} conditions x {len(prompts)} documents, {args.shots}-shot, "
        f"max_gen_toks {args.max_gen_toks}, batch {args.batch_size}, max_rows {args.max_rows}"
    )
    base = times["per condition, hooks"]
    for way, sec in times.items():
        print(f"  {way:32s} {sec:8.2f} s  {base / sec:5.2f}x")
    best = max(base / times["conditions batched"], base / times["conditions batched, sdpa"])
    print(
        f"  batched over one evaluate per condition: {base / times['conditions batched']:.2f}x eager, "
        f"{base / times['conditions batched, sdpa']:.2f}x sdpa (target 3x {'met' if best >= 3 else 'MISSED'}); "
        f"generations {'identical' if eager else 'DIFFER'} (eager), {'identical' if sdpa else 'DIFFER'} (sdpa); "
        f"sdpa vs eager hooks: {differ} of {sum(map(len, ref.values()))} generations differ (rounding)"
    )
    done, kept = sum(row_steps["compact"]), sum(row_steps["kept"])
    print(
        f"  ended rows dropped: {done} rows computed instead of {kept} ({1 - done / kept:.0%} fewer), "
        f"{times['batched, ended rows kept'] / times['conditions batched']:.2f}x faster (eager)"
    )
    return eager and sdpa


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--max-gen-toks", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-rows", type=int, default=256, help="rows of one batched decode (conditions x documents)")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--models", nargs="+", choices=["organism", "random"], default=["organism", "random"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ok = True
    if "organism" in args.models:
        ok &= run("organism-base, organism_reasoning", dp.load_model("organism-base"), "organism_reasoning", args, None)
    if "random" in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            path = make_tiny_model(
                tmp, arch="llama", n_layers=args.layers, n_heads=8, n_kv_heads=2, d_model=256, seed=0
            )
            ok &= run(
                f"random {args.layers}-layer model, gsm8k_cot", dp.load_model(path), "gsm8k_cot", args, args.data_dir
            )
    if not ok:
        raise SystemExit("generations differ")


if __name__ == "__main__":
    main()
