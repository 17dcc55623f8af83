"""Generation sweeps that verify the baseline's generation and decode only from where a condition departs (issue 22).

Three sweeps, each computed four ways with identical generations (checked):

- **per condition**: one ``evaluate`` (one ``generate_until`` for stories260K) per condition under
  ``ablate``, the hook path: what evaluating a checkpoint per condition costs, the reference;
- **draft=None**: ``run_sweep``'s engine decoding every token of every condition, conditions as row
  blocks of each decode batch (:func:`~depthprobe.engine.generation.generate_conditions`);
- **draft="baseline"** (``run_sweep``'s default): the baseline decoded once, its generation verified
  under every condition by tail-only teacher-forced forwards, each row decoded on only from its
  first differing token (:mod:`depthprobe.engine.verify`);
- the same with **prompt-lookup drafts** after the divergence (``lookup`` tokens checked per step).

The sweeps: the demo's head sweep (every head, group and weight-zeroed head of organism-base's
layer 3 on ``organism_reasoning``: ``make demo``), every head of every layer of stories260K
continuing short stories for ``--story-tokens`` new tokens, and organism-base's layer sweep (where
little of the baseline survives: the verification must cost at most 1.1x ``draft=None``). The two
engine sweeps go through ``run_sweep`` (baseline included, results written to a temporary run
directory) for the organism tasks, and through ``generate_conditions`` as ``run_sweep`` calls it for
stories260K. The ways are interleaved (A B C D, A B C D, ...) and each is timed in wall-clock and in
CPU seconds of this process (one torch thread: the CPU time is what the computation cost, the wall
time also what other jobs on the machine took from it); the ratios use the fastest repetition.

Targets on the project's CPU (demo head sweep): >= 5x over one evaluate per condition, >= 1.6x over
draft=None; the organism layer sweep within 1.1x of draft=None.

Usage: python benchmarks/generation_sweep.py [--limit 200] [--repeats 2] [--sweeps demo stories layers]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import depthprobe as dp
import depthprobe.engine.generation as engine_generation
from depthprobe.engine.generation import generate_conditions
from depthprobe.engine.verify import VerifyStats
from depthprobe.evaluation.generation import generate_until
from depthprobe.organisms import CHECKPOINTS_DIR
from depthprobe.sweep import condition_id, group_grid, head_grid, head_weights_grid, layer_grid

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO.parent / "shared" / "models" / "stories260K"
STORY_STARTS = [
    "Once upon a time, there was a little girl named Lily. She",
    "Tom had a big red ball. One day,",
    "The sun was shining and the birds were singing. Sam",
    "There was a small cat who lived in a",
    "Mia wanted to",
    "One day, a boy named Tim went to the park with his mom. He",
    "The little dog was sad because",
    "Anna and Ben were best friends. They liked to",
    "In a big forest, there lived a bear who",
    "Lucy found a",
    "It was a rainy day. Max could not go outside, so he",
    "The old man had a garden full of",
    "Sara saw a bird",
    "Once there was a fish named Fin. Fin loved to",
    "Jack and his sister went to the beach. They",
    "A frog",
]


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def organism_ways(model, task: str, conditions: list, args) -> dict[str, Callable[[], dict[str, list[str]]]]:
    """The four ways for a task of the organisms, each returning {condition id: generated texts}."""
    kw = dict(limit=args.limit, batch_size=args.batch_size)

    def per_condition() -> dict[str, list[str]]:
        out = {}
        for cond in [[]] + conditions:
            with dp.ablate(model, *cond):
                out[condition_id(cond)] = list(
                    dp.evaluate(model, task, **kw).samples.sort_values("doc_id")["generation"]
                )
        return out

    def sweep(draft: str | None, lookup: int = 0) -> Callable[[], dict[str, list[str]]]:
        def run() -> dict[str, list[str]]:
            engine_generation.LOOKUP_TOKENS = lookup
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    dp.run_sweep(model, task, conditions, out_dir=tmp, progress=False, draft=draft, **kw)
                    df = dp.load_results(tmp, samples=True).sort_values("doc_id")
            finally:
                engine_generation.LOOKUP_TOKENS = 0
            return {cid: list(part["generation"]) for cid, part in df.groupby("condition")}

        return run

    return {
        "per condition (evaluate under ablate)": per_condition,
        "draft=None": sweep(None),
        'draft="baseline"': sweep("baseline"),
        f'draft="baseline", lookup {args.lookup}': sweep("baseline", args.lookup),
    }


def story_ways(model, conditions: list, args) -> dict[str, Callable[[], dict[str, list[str]]]]:
    """The four ways for stories260K continuing STORY_STARTS (EOS the only stop), as run_sweep's engine runs them."""
    prompts = (STORY_STARTS * (1 + args.stories // len(STORY_STARTS)))[: args.stories]
    kw = dict(until=[], max_gen_toks=args.story_tokens, batch_size=args.batch_size)

    def per_condition() -> dict[str, list[str]]:
        out = {}
        for cond in [[]] + conditions:
            with dp.ablate(model, *cond):
                out[condition_id(cond)] = [g.text for g in generate_until(model, prompts, **kw)]
        return out

    def engine(draft: str | None, lookup: int = 0) -> Callable[[], dict[str, list[str]]]:
        def run() -> dict[str, list[str]]:  # as UnitRunner: the baseline alone, then units of max_rows // batch_size
            base = generate_conditions(model, prompts, [[]], **kw)["baseline"]
            out = {"baseline": [g.text for g in base]}
            per = 256 // args.batch_size
            for at in range(0, len(conditions), per):
                got = generate_conditions(
                    model,
                    prompts,
                    conditions[at : at + per],
                    draft=draft,
                    lookup=lookup,
                    baseline=[g.tokens for g in base],
                    **kw,
                )
                out.update({cid: [g.text for g in gens] for cid, gens in got.items()})
            return out

        return run

    return {
        "per condition (generate_until under ablate)": per_condition,
        "draft=None": engine(None),
        'draft="baseline"': engine("baseline"),
        f'draft="baseline", lookup {args.lookup}': engine("baseline", args.lookup),
    }


def share(model, prompts_task: str | None, conditions: list, args) -> str:
    """How much verification saved: the share of generated tokens verified rather than decoded."""
    stats = VerifyStats()
    if prompts_task is None:
        prompts = (STORY_STARTS * (1 + args.stories // len(STORY_STARTS)))[: args.stories]
        kw: dict = dict(until=[], max_gen_toks=args.story_tokens, batch_size=args.batch_size)
    else:
        from depthprobe.evaluator import shared_prefix
        from depthprobe.tasks import get_task

        t = get_task(prompts_task)
        full = [i.prompt for i in t.instances(limit=args.limit)]
        prefix = shared_prefix(full, t.fewshot_delimiter)
        prompts = [p[len(prefix) :] for p in full]
        kw = dict(
            until=list(t.generation.until),
            max_gen_toks=t.generation.max_gen_toks,
            batch_size=args.batch_size,
            prefix=prefix or None,
        )
    base = generate_conditions(model, prompts, [[]], **kw)["baseline"]
    per = 256 // args.batch_size
    for at in range(0, len(conditions), per):
        generate_conditions(
            model, prompts, conditions[at : at + per], baseline=[g.tokens for g in base], stats=stats, **kw
        )
    total = stats.tokens_verified + stats.tokens_decoded
    return (
        f"{stats.tokens_verified / max(1, total):.0%} of generated tokens verified, not decoded; "
        f"{stats.finished_by_verify} of {stats.rows} rows finished by verification alone; "
        f"{stats.forwards['decode']} decode forwards ({stats.row_steps} row steps), "
        f"{stats.forwards['verify']} verification and {stats.forwards['baseline']} baseline forwards"
    )


def run(name: str, ways: dict[str, Callable[[], dict[str, list[str]]]], args, note: str, target: str) -> bool:
    times: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
    texts: dict[str, dict[str, list[str]]] = {}
    for rep in range(args.repeats):
        for way, fn in ways.items():
            if way.startswith("per condition") and rep:
                continue  # the slow reference runs once
            wall, cpu, out = timed(fn)
            times[way].append((wall, cpu))
            texts.setdefault(way, out)  # type: ignore[arg-type]
    ref = texts[next(iter(ways))]
    same = {way: got == ref for way, got in texts.items()}
    best = {way: (min(w for w, _ in t), min(c for _, c in t)) for way, t in times.items()}
    print(f"\n{name}\n  {note}")
    for way, (wall, cpu) in best.items():
        print(f"  {way:45s} wall {wall:8.2f} s  cpu {cpu:8.2f} s  generations {'identical' if same[way] else 'DIFFER'}")
    ev, none, verify = best[next(iter(ways))], best["draft=None"], best['draft="baseline"']
    lookup = best[f'draft="baseline", lookup {args.lookup}']
    print(
        f'  draft="baseline" over per condition: {ev[0] / verify[0]:.2f}x wall, {ev[1] / verify[1]:.2f}x cpu; '
        f"over draft=None: {none[0] / verify[0]:.2f}x wall, {none[1] / verify[1]:.2f}x cpu ({target})"
    )
    print(
        f"  prompt-lookup drafts ({args.lookup} per step) over plain verification: {verify[0] / lookup[0]:.2f}x wall, "
        f"{verify[1] / lookup[1]:.2f}x cpu"
    )
    return all(same.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=200, help="organism problems (the demo's 200)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="repetitions of the engine ways (the reference runs once)")
    p.add_argument("--stories", type=int, default=32, help="story prompts for stories260K")
    p.add_argument("--story-tokens", type=int, default=96, help="new tokens per story (>= 64)")
    p.add_argument("--lookup", type=int, default=4, help="drafted tokens checked per step in the lookup variant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sweeps", nargs="+", choices=["demo", "stories", "layers"], default=["demo", "stories", "layers"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ok = True
    print(
        f"torch threads {args.threads}; times are the fastest of {args.repeats} interleaved repetitions "
        f"(the per-condition reference: one)"
    )
    if "demo" in args.sweeps or "layers" in args.sweeps:
        model = dp.load_model(CHECKPOINTS_DIR / "organism-base")
    if "demo" in args.sweeps:
        conds = head_grid(model, 3) + group_grid(model, 3) + head_weights_grid(model, 3)
        ok &= run(
            f"demo head sweep: organism-base, organism_reasoning, {len(conds) + 1} conditions x {args.limit} "
            f"problems, batch {args.batch_size}",
            organism_ways(model, "organism_reasoning", conds, args),
            args,
            share(model, "organism_reasoning", conds, args),
            "targets 5x and 1.6x",
        )
    if "stories" in args.sweeps:
        if not (STORIES / "config.json").is_file():
            print(f"\nstories260K skipped: {STORIES} is absent")
        else:
            stories = dp.load_model(STORIES)
            conds = [
                [dp.zero_head(layer, h)] for layer in range(stories.cfg.n_layers) for h in range(stories.cfg.n_heads)
            ]
            ok &= run(
                f"stories260K heads sweep: every head of every layer ({len(conds) + 1} conditions) x {args.stories} "
                f"stories, {args.story_tokens} new tokens",
                story_ways(stories, conds, args),
                args,
                share(stories, None, conds, args),
                "no target",
            )
    if "layers" in args.sweeps:
        conds = layer_grid(model)
        ok &= run(
            f"organism layer sweep: organism-base, organism_reasoning, {len(conds) + 1} conditions x {args.limit}",
            organism_ways(model, "organism_reasoning", conds, args),
            args,
            share(model, "organism_reasoning", conds, args),
            "must stay within 1.1x: over draft=None >= 0.91x",
        )
    if not ok:
        raise SystemExit("generations differ")


if __name__ == "__main__":
    main()
