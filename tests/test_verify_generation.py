"""Verifying the baseline's generation and decoding from the divergence equals one generate_until per condition.

The reference of every test is ``generate_until`` under ``ablate`` (the hook path, one condition at a
time, every token decoded). Equality is token for token; every greedy step of the reference must
have a top-2 margin above the float32 logit bound (tests/tolerance.py), else the test fails saying
the prompts cannot prove equality. Each test also asserts that what it is about really happened
(rows verified part way and decoded on, stops straddling the divergence, budgets reached one way
and the other), so none can pass vacuously.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import pytest
import torch

import depthprobe as dp
from depthprobe.engine.generation import generate_conditions
from depthprobe.engine.verify import VerifyStats, diverge_at, with_divergence
from depthprobe.evaluation.generation import generate_until, plan_generation
from depthprobe.evaluator import shared_prefix
from depthprobe.organisms import CHECKPOINTS_DIR
from depthprobe.sweep import InProcessExecutor, condition_id
from depthprobe.tasks import get_task
from tests.bridges import bridge
from tests.tolerance import ForwardShape, logit_bound, logit_scale, top2_margins

EOS = 2  # the organisms' </s>
TEXTS = ["Q: 3 plus 4?\nA: The answer is 7."]


@functools.cache
def organism_prompts(limit: int = 8, shots: int = 1) -> tuple[str, tuple[str, ...]]:
    prompts = [i.prompt for i in get_task("organism_reasoning").instances(limit=limit, num_fewshot=shots)]
    prefix = shared_prefix(prompts, "\n\n")
    return prefix, tuple(p[len(prefix) :] for p in prompts)


def reference(model, prompts: list[str], condition: list, **kw) -> list:
    """generate_until under ablate, its every greedy step's margin above the float32 bound."""
    kw = {k: v for k, v in kw.items() if k not in ("max_rows", "lookup", "min_share")}  # the engine's own options
    with dp.ablate(model, *condition):
        ref = generate_until(model, prompts, **kw)
    plan = plan_generation(model, prompts, **kw)
    bound_shape, margins, scale = ForwardShape.of(model), [], 0.0
    with torch.no_grad(), dp.ablate(model, *condition):
        for i, g in enumerate(ref):
            ctx = plan.requests.tokens[i]
            ids = torch.tensor([ctx + list(g.tokens[:-1])])
            logits = model(ids)[0, len(ctx) - 1 :]
            margins.append(float(top2_margins(logits).min()))
            scale = max(scale, logit_scale(logits))
    bound = logit_bound(bound_shape, scale)
    assert min(margins) > bound, (
        f"{condition_id(condition)}: a greedy step's top-2 margin {min(margins):.3g} <= "
        f"float32 bound {bound:.3g}; these prompts cannot prove token equality"
    )
    return ref


def check(
    model, prompts: list[str], conditions: list[list], *, stats: VerifyStats | None = None, hook_free: bool = True, **kw
) -> dict[str, list]:
    """generate_conditions (draft="baseline") equals the reference for every condition; returns both, per condition.
    Every decode batch is verified (min_share 0) unless the test says otherwise: verification is what these test."""
    kw.setdefault("min_share", 0.0)
    got = generate_conditions(model, prompts, conditions, draft="baseline", stats=stats, hook_free=hook_free, **kw)
    out = {}
    for cond in conditions:
        ref = reference(model, prompts, cond, **kw)
        mine = got[condition_id(cond)]
        assert [g.tokens for g in mine] == [r.tokens for r in ref], condition_id(cond)
        assert mine == ref, condition_id(cond)  # text, n_tokens, hit_stop, prompt_truncated, prefix_reused
        out[condition_id(cond)] = (mine, ref)
    return out


def kind_conditions(source) -> dict[str, list[list]]:
    """Per intervention kind, conditions of organism-base that leave part of the baseline's generation intact."""
    return {
        "skip": [[dp.skip_layer(1)]],
        "skip_attn": [[dp.skip_attn(2)]],
        "skip_mlp": [[dp.skip_mlp(3)]],
        "head": [[dp.zero_head(2, 1)], [dp.zero_head(3, 3)]],
        "group": [[dp.zero_kv_group(3, 1)]],
        "head_weights": [[dp.zero_head_weights(3, 0)]],
        "o_proj": [[dp.patch_o_proj(3, source)], [dp.patch_o_proj(2, source, heads=[1], alpha=0.5)]],
        "mean_head": [[dp.mean_head(3, 2, TEXTS)], [dp.mean_head(1, 5, TEXTS)]],
    }


@pytest.mark.parametrize(
    "kind", ["skip", "skip_attn", "skip_mlp", "head", "group", "head_weights", "o_proj", "mean_head"]
)
def test_every_kind_equals_generate_until(kind: str) -> None:
    """One test per intervention kind, with the few-shot prefix, EOS and a budget some rows reach; exact kinds on
    both paths (row-wise weight edits, and the bridge's hooks)."""
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    source = bridge(CHECKPOINTS_DIR / "organism-distilled")
    conds = kind_conditions(source)[kind]
    prefix, prompts = organism_prompts()
    kw = dict(until=list(get_task("organism_reasoning").generation.until), max_gen_toks=40, batch_size=4, prefix=prefix)
    base = generate_conditions(model, list(prompts), [[]], **kw)["baseline"]
    paths = [True, False] if kind != "mean_head" else [True]  # mean_head has no weight edit: hooks either way
    for hook_free in paths:
        stats = VerifyStats()
        out = check(model, list(prompts), conds, stats=stats, hook_free=hook_free, **kw)
        assert stats.tokens_verified > 0 and stats.rows_decoded > 0, stats
        partial = [
            0 < diverge_at(g.tokens, b.tokens) < len(b.tokens) for gens, _ in out.values() for g, b in zip(gens, base)
        ]
        assert any(partial), "some rows must be verified part way, then decoded on from their divergence"


@pytest.mark.parametrize("name", ["llama", "qwen3", "stories260K", "organism-distilled"])
def test_models_equal_generate_until(name: str, request: pytest.FixtureRequest) -> None:
    """Tiny random Llama and Qwen3 (GQA), stories260K and the distilled organism, without a shared prefix."""
    if name == "organism-distilled":
        model = bridge(CHECKPOINTS_DIR / name)
        prompts = list(organism_prompts(6, 0)[1])
        until = ["Q:", "\n\n"]
    else:
        model = bridge(
            request.getfixturevalue(
                {"llama": "tiny_llama_dir", "qwen3": "tiny_qwen3_dir", "stories260K": "stories_dir"}[name]
            )
        )
        prompts = [
            "Once upon a time, there was a little girl named Lily. She",
            "Q: What is 2 plus 3?\nA:",
            "The cat sat on the",
            "Tom and his dog went to the park. They",
        ]
        until = ["\n\n"]
    last = model.cfg.n_layers - 1
    conds = [
        [dp.zero_head(last, 1)],
        [dp.zero_head(1, 0)],
        [dp.zero_kv_group(last, 0)],
        [dp.skip_layer(0), dp.zero_head(last, 0)],
    ]
    if name != "organism-distilled":  # on its prompts skip_mlp:L3 meets a float32 near-tie
        conds.append([dp.skip_mlp(last)])
    stats = VerifyStats()
    check(model, prompts, conds, stats=stats, until=until, max_gen_toks=24, batch_size=2)
    assert stats.rows_decoded > 0


def test_diverging_at_token_zero_and_never() -> None:
    """skip:L3 departs at the first token of most rows (and early on the others); an o_proj patch of layer 1 leaves every generation intact,
    which verification alone finishes (nothing decoded)."""
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    prefix, prompts = organism_prompts()
    kw = dict(until=list(get_task("organism_reasoning").generation.until), max_gen_toks=40, batch_size=4, prefix=prefix)
    base = generate_conditions(model, list(prompts), [[]], **kw)["baseline"]
    never = [dp.patch_o_proj(1, bridge(CHECKPOINTS_DIR / "organism-distilled"))]
    for cond, expect in (([dp.skip_layer(3)], "zero"), (never, "never")):
        stats = VerifyStats()
        gens, _ = check(model, list(prompts), [cond], stats=stats, **kw)[condition_id(cond)]
        metrics, samples = with_divergence({}, pd.DataFrame(index=range(len(gens))), gens, base)
        if expect == "zero":
            assert list(samples["diverge_at"]).count(0) >= len(gens) // 2
            assert metrics["identical_to_baseline"] == 0.0 and stats.rows_decoded == len(gens)
        else:
            assert list(samples["diverge_at"]) == [g.n_tokens for g in base]
            assert stats.finished_by_verify == len(gens) and stats.rows_decoded == 0
            assert metrics["identical_to_baseline"] == 1.0 and bool(samples["identical_to_baseline"].all())


def test_stop_straddling_the_divergence() -> None:
    """A stop string whose first character ends the verified prefix and whose second begins the condition's first
    differing token: the condition must stop right there, as generate_until does."""
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    tok = model.tokenizer
    prefix, prompts = organism_prompts()
    kw = dict(max_gen_toks=40, batch_size=4, prefix=prefix)
    candidates = [[dp.zero_kv_group(3, 1)], [dp.zero_head_weights(3, 0)], [dp.skip_attn(2)], [dp.zero_head(2, 1)]]
    free = generate_conditions(model, list(prompts), [[]] + candidates, until=[], draft=None, **kw)
    stop = row = cond = None
    for cond in candidates:
        for r, (g, b) in enumerate(zip(free[condition_id(cond)], free["baseline"])):
            d = diverge_at(g.tokens, b.tokens)
            if 0 < d < len(g.tokens):
                head, full = tok.decode(list(g.tokens[:d])), tok.decode(list(g.tokens[: d + 1]))
                if head and full.startswith(head) and len(full) > len(head):
                    candidate = head[-1] + full[len(head)]
                    if candidate.strip() and candidate not in head:
                        stop, row = candidate, r
                        break
        if stop is not None:
            break
    assert stop is not None, "no row whose divergence can be straddled by a two-character stop"
    out = check(model, list(prompts), [cond], until=[stop], **kw)
    gens, _ = out[condition_id(cond)]
    d = diverge_at(free[condition_id(cond)][row].tokens, free["baseline"][row].tokens)
    assert gens[row].hit_stop and gens[row].n_tokens == d + 1, "the condition stops at its first differing token"


def test_eos_and_max_gen_toks_reached_one_way_and_the_other() -> None:
    """With 28 new tokens, some baseline rows run out of budget where the condition ends by EOS, and the reverse."""
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    prefix, prompts = organism_prompts()
    conds = [[dp.skip_layer(1)], [dp.skip_attn(2)], [dp.zero_head_weights(3, 0)]]
    kw = dict(until=list(get_task("organism_reasoning").generation.until), max_gen_toks=28, batch_size=4, prefix=prefix)
    out = check(model, list(prompts), conds, **kw)
    base = generate_conditions(model, list(prompts), [[]], **kw)["baseline"]
    cases = set()
    for gens, _ in out.values():
        for g, b in zip(gens, base):
            if not b.hit_stop and g.hit_stop and g.tokens[-1] == EOS:
                cases.add("baseline budget, condition EOS")
            if b.hit_stop and b.tokens[-1] == EOS and not g.hit_stop and g.n_tokens == 28:
                cases.add("baseline EOS, condition budget")
    assert cases == {"baseline budget, condition EOS", "baseline EOS, condition budget"}, cases


def test_truncated_prompts_and_few_shot_prefix() -> None:
    """5-shot prompts longer than the context left after the budget are cut from the left (and cannot reuse the
    prefix cache); the others reuse it: both kinds of batch in one call."""
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    prefix, prompts = organism_prompts(8, 5)
    plan = plan_generation(model, list(prompts), until=["Q:"], max_gen_toks=1, prefix=prefix)
    ctx = [len(t) for t in plan.requests.tokens]
    budget = 512 - sorted(ctx)[len(ctx) // 2]  # half the prompts no longer fit: cut
    kw = dict(until=["Q:", "\n\n"], max_gen_toks=budget, batch_size=3, prefix=prefix)
    out = check(model, list(prompts), [[dp.zero_head(2, 1)], [dp.mean_head(3, 2, TEXTS)]], **kw)
    gens, _ = out["head:L2H1"]
    assert any(g.prompt_truncated for g in gens) and any(g.prefix_reused for g in gens)


def test_mixed_row_blocks_and_pooled_continuations() -> None:
    """Hook-free and hooked conditions, starting at different layers, several groups (max_rows) and continuation
    batches pooled across decode batches; with and without prompt-lookup drafts."""
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    prefix, prompts = organism_prompts()
    conds = [
        [dp.zero_head(3, 3)],
        [dp.mean_head(3, 2, TEXTS)],
        [dp.zero_head(2, 1)],
        [dp.skip_attn(2)],
        [dp.zero_kv_group(1, 0), dp.zero_head(3, 0)],
        [dp.mean_head(1, 5, TEXTS), dp.skip_mlp(3)],
    ]
    kw = dict(until=list(get_task("organism_reasoning").generation.until), max_gen_toks=32, batch_size=2, prefix=prefix)
    for lookup in (0, 3):
        stats = VerifyStats()
        check(model, list(prompts), conds, stats=stats, max_rows=6, lookup=lookup, **kw)
        assert stats.forwards["decode"] > 0 and stats.rows_decoded > 6
        if lookup:
            assert stats.drafted_accepted > 0


def test_groups_that_keep_little_decode_their_other_batches_token_by_token() -> None:
    """A group whose first decode batch suggests verification saves less than min_share decodes its other
    batches as draft=None does (hook-free and hooked groups): the same generations as the reference."""
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    prefix, prompts = organism_prompts()
    conds = [[dp.zero_head(3, 3)], [dp.skip_layer(1)], [dp.mean_head(3, 2, TEXTS)]]
    kw = dict(until=list(get_task("organism_reasoning").generation.until), max_gen_toks=32, batch_size=2, prefix=prefix)
    plain, verified = VerifyStats(), VerifyStats()
    check(model, list(prompts), conds, stats=plain, min_share=2.0, **kw)  # more than any batch can save (<= 2)
    check(model, list(prompts), conds, stats=verified, min_share=0.0, **kw)
    batches = len(prompts) // 2
    assert plain.jobs_plain == 2 * (batches - 1) and verified.jobs_plain == 0  # two groups: hook-free, hooked
    assert plain.rows == 2 * len(conds) and verified.rows == len(conds) * len(prompts)


def test_draft_is_checked() -> None:
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    with pytest.raises(ValueError, match="draft must be one of 'baseline', None"):
        generate_conditions(model, ["Q: 1?\nA:"], [[dp.zero_head(1, 1)]], until=[], draft="prompt")
    with pytest.raises(ValueError, match="baseline must hold"):
        generate_conditions(model, ["Q: 1?\nA:"], [[dp.zero_head(1, 1)]], until=[], max_gen_toks=4, baseline=[[]])
    with pytest.raises(ValueError, match="draft must be 'baseline' or None"):
        dp.run_sweep(model, "organism_reasoning", "heads:1", out_dir="/nonexistent/never", limit=2, draft="yes")


class _Killed(InProcessExecutor):
    """Stops the sweep (as Ctrl-C would) once ``after`` conditions were stored."""

    def __init__(self, after: int) -> None:
        self.after = after

    def run(self, model, spec, units, on_result) -> None:
        stored = []

        def store(result) -> None:
            on_result(result)
            stored.append(result)
            if len(stored) == self.after:
                raise KeyboardInterrupt

        super().run(model, spec, units, store)


def test_run_sweep_same_results_either_way_and_resume_after_kill(tmp_path: Path) -> None:
    """draft="baseline" (killed after 3 conditions, then resumed by a fresh runner that must decode the baseline
    again) stores what draft=None stores; the manifest records the choice without making it part of the identity."""
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    kw = dict(limit=6, batch_size=3, max_rows=6, progress=False, max_gen_toks=32, num_fewshot=1)
    plain = dp.run_sweep(model, "organism_reasoning", "heads:3", out_dir=tmp_path / "none", draft=None, **kw)
    with pytest.raises(KeyboardInterrupt):
        dp.run_sweep(model, "organism_reasoning", "heads:3", out_dir=tmp_path / "verify", executor=_Killed(3), **kw)
    assert len(list((tmp_path / "verify" / "conditions").glob("*.json"))) == 3
    resumed = dp.run_sweep(model, "organism_reasoning", "heads:3", out_dir=tmp_path / "verify", **kw)
    assert len(resumed.attrs["computed"]) == len(plain) - 3
    columns = [
        "condition",
        "exact_match,strict-match",
        "identical_to_baseline",
        "diverge_at",
        "delta_identical_to_baseline_ci_low",
        "delta_diverge_at_stderr",
    ]
    pd.testing.assert_frame_equal(plain[columns], resumed[columns])
    a = dp.load_results(tmp_path / "none", samples=True).sort_values(["condition", "doc_id"]).reset_index(drop=True)
    b = dp.load_results(tmp_path / "verify", samples=True).sort_values(["condition", "doc_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        a[
            [
                "condition",
                "doc_id",
                "generation",
                "n_generated_tokens",
                "hit_stop",
                "diverge_at",
                "identical_to_baseline",
            ]
        ],
        b[
            [
                "condition",
                "doc_id",
                "generation",
                "n_generated_tokens",
                "hit_stop",
                "diverge_at",
                "identical_to_baseline",
            ]
        ],
    )
    assert 0 < plain["identical_to_baseline"].iloc[1:].mean() < 1, "the heads must change some generations"
    assert (a[a.condition == "baseline"]["diverge_at"] == a[a.condition == "baseline"]["n_generated_tokens"]).all()
    import json

    assert json.loads((tmp_path / "verify" / "manifest.json").read_text())["draft"] == "baseline"
    again = dp.run_sweep(model, "organism_reasoning", "heads:3", out_dir=tmp_path / "none", draft="baseline", **kw)
    assert again.attrs["computed"] == []  # the same run: nothing recomputed, nothing refused


def test_summary_and_figure_show_divergence(tmp_path: Path) -> None:
    from depthprobe import cli, plots

    model = bridge(CHECKPOINTS_DIR / "organism-base")
    df = dp.run_sweep(
        model, "organism_reasoning", "heads:3", out_dir=tmp_path, limit=4, batch_size=4, max_gen_toks=24, progress=False
    )
    text = cli.summary(df, ["exact_match,strict-match"], title="t")
    assert "identical" in text and "diverge_at" in text
    fig = plots.divergence(df, group_size=4)
    ys = [y for trace in fig.data if trace.xaxis == "x" for y in trace.y]  # panel (a)
    assert sorted(ys) == sorted(df[df.condition != "baseline"]["identical_to_baseline"])


def test_per_condition_sweeps_report_the_same_divergence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """engine=False (one evaluate per condition, as chat sweeps run) measures divergence as the engine does, also
    when a resumed runner must evaluate the baseline again; `sweep --draft none` records draft=None."""
    from depthprobe.__main__ import main

    model = bridge(CHECKPOINTS_DIR / "organism-base")
    kw = dict(limit=6, batch_size=3, progress=False, max_gen_toks=32, num_fewshot=1)
    engine = dp.run_sweep(model, "organism_reasoning", "heads:3", out_dir=tmp_path / "engine", **kw)
    with pytest.raises(KeyboardInterrupt):
        dp.run_sweep(
            model, "organism_reasoning", "heads:3", out_dir=tmp_path / "each", engine=False, executor=_Killed(2), **kw
        )
    each = dp.run_sweep(model, "organism_reasoning", "heads:3", out_dir=tmp_path / "each", engine=False, **kw)
    assert len(each.attrs["computed"]) == len(engine) - 2  # the baseline was stored: this runner evaluated it again
    columns = ["condition", "identical_to_baseline", "diverge_at", "delta_diverge_at_ci_high"]
    pd.testing.assert_frame_equal(engine[columns], each[columns])
    assert 0 < engine["identical_to_baseline"].iloc[1:].mean() < 1, "the heads must change some generations"

    out = tmp_path / "cli"
    args = ["sweep", "--task", "organism_reasoning", "--grid", "heads:3", "--limit", "3", "--out", str(out)]
    assert main([*args, "--no-progress", "--draft", "none"]) == 0
    assert "diverge_at" in capsys.readouterr().out
    import json

    manifest = json.loads(next(out.rglob("manifest.json")).read_text())
    assert "draft" in manifest and manifest["draft"] is None
