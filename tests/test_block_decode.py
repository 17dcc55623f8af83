"""Conditions batched as row blocks on the plain model (RowEdits, BlockDecoder) equal one condition at a time.

References: the per-condition exact weight edit (``edited_model``, itself tested against Hugging
Face weight surgery) for forward logits and KV caches, and the hook path (``ablate``) for
generations. The sharing itself is checked: layers below a condition's first edited layer are
computed once (unablated) for every condition.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

import depthprobe as dp
from depthprobe import adapter
from depthprobe.evaluation.fast_decode import BlockDecoder, HookFreeDecoder
from depthprobe.evaluation.generation import generate_until, plan_generation
from depthprobe.evaluation.tokenize import left_pad
from depthprobe.evaluator import shared_prefix
from depthprobe.interventions.weights import RowEdits, edited_model
from depthprobe.organisms import CHECKPOINTS_DIR
from depthprobe.sweep import condition_id
from depthprobe.tasks import get_task
from tests.bridges import bridge
from tests.tolerance import ForwardShape, assert_logits_close

PROMPTS = ["Q: There are 15 trees in the grove. How many?\nA:", "Once upon a time, there was", "Q: 1 2 3\nA:"]


def tiny_conditions(n_layers: int) -> list[list]:
    last = n_layers - 1
    return [
        [],
        [dp.skip_layer(0)],
        [dp.skip_layer(last)],
        [dp.zero_head(1, 0)],
        [dp.zero_head(1, 3)],
        [dp.zero_kv_group(1, 1)],
        [dp.skip_attn(last)],
        [dp.skip_mlp(0)],
        [dp.zero_head_weights(last, 2)],
        [dp.skip_layer(1), dp.zero_head(last, 1)],
    ]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_row_blocks_equal_each_conditions_weight_edit(arch: str, request: pytest.FixtureRequest) -> None:
    """One forward of k row blocks under RowEdits = k forwards of edited_model, block by block (logits and cache)."""
    model = bridge(request.getfixturevalue(f"tiny_{arch}_dir"))
    conds = tiny_conditions(model.cfg.n_layers)
    k = len(conds)
    tok = model.tokenizer
    ids, mask = left_pad([tok(p)["input_ids"] for p in PROMPTS], adapter.pad_token_id(tok))
    b = ids.shape[0]
    shape = ForwardShape.of(model)
    edits = RowEdits(model, conds)
    cache = DynamicCache()
    with torch.inference_mode(), edits.applied() as plain:
        got = plain(
            input_ids=ids.repeat(k, 1), attention_mask=mask.repeat(k, 1), **adapter.cache_kwargs(plain, cache)
        ).logits
    baseline = None
    for j, cond in enumerate(conds):
        ref_cache = DynamicCache()
        with torch.inference_mode(), edited_model(model, *cond) as plain:
            ref = plain(input_ids=ids, attention_mask=mask, **adapter.cache_kwargs(plain, ref_cache)).logits
        baseline = ref if baseline is None else baseline
        block = got[j * b : (j + 1) * b]
        assert_logits_close(block, ref, shape, condition_id(cond))
        if cond:
            assert (block - baseline).abs().max() > 1e-3, f"{condition_id(cond)} must change the logits"
        kept = [i for i in range(model.cfg.n_layers) if not any(iv.kind == "skip" and iv.layer == i for iv in cond)]
        for new, old in enumerate(kept):  # the edited model has no cache for a removed layer
            assert_logits_close(cache.layers[old].keys[j * b : (j + 1) * b], ref_cache.layers[new].keys, shape)
            assert_logits_close(cache.layers[old].values[j * b : (j + 1) * b], ref_cache.layers[new].values, shape)


def test_generations_equal_the_hooks_with_a_shared_prefix() -> None:
    """BlockDecoder (prefix and prompts shared below each first edited layer) = generate_until under ablate."""
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    source = bridge(CHECKPOINTS_DIR / "organism-distilled")
    inst = get_task("organism_reasoning").instances(limit=5, num_fewshot=2)
    prompts = [i.prompt for i in inst]
    prefix = shared_prefix(prompts, "\n\n")
    assert prefix
    rest = [p[len(prefix) :] for p in prompts]
    conds = [
        [dp.skip_layer(2)],
        [],
        [dp.zero_head(3, 1)],
        [dp.zero_head(3, 0)],
        [dp.skip_layer(0)],
        [dp.patch_o_proj(1, source)],
        [dp.zero_head(1, 2), dp.patch_o_proj(1, source, heads=[0, 2], alpha=0.5)],
        [dp.zero_kv_group(1, 0), dp.skip_mlp(3)],
    ]
    kw = dict(until=["Q:", "\n\n"], max_gen_toks=16, batch_size=2, prefix=prefix)
    plan = plan_generation(model, rest, **kw)
    got = plan.run(model, BlockDecoder(conds), copies=len(conds))
    texts = set()
    for cond, mine in zip(conds, got):
        with dp.ablate(model, *cond):
            ref = generate_until(model, rest, **kw)
        assert [g.text for g in mine] == [r.text for r in ref], condition_id(cond)
        assert [(g.n_tokens, g.hit_stop, g.prefix_reused) for g in mine] == [
            (r.n_tokens, r.hit_stop, r.prefix_reused) for r in ref
        ]
        texts.update(r.text for r in ref)
    assert len(texts) > len(rest) + 3, "the conditions must change the generations"


class Recording:
    """A decoder that keeps what each call decoded (``Decoded``: tokens, row_steps) and the rows it started with."""

    def __init__(self, decoder) -> None:  # noqa: ANN001
        self.decoder, self.calls = decoder, []
        self.prefix_cache = decoder.prefix_cache

    def __call__(self, model, input_ids, attention_mask, **kw):  # noqa: ANN001, ANN003, ANN204
        out = self.decoder(model, input_ids, attention_mask, **kw)
        self.calls.append(out)
        return out


@pytest.mark.parametrize("compact", [True, False])
def test_ended_rows_leave_the_batch(compact: bool) -> None:
    """Rows that end leave the running batch with their cache (BlockDecoder and the hooked row blocks alike): fewer
    rows are computed than a batch kept to the end would compute, and every condition's generations still equal
    generate_until under ablate, token for token (the running rows' blocks follow them through each compaction)."""
    from depthprobe.engine.generation import HookedBlockDecoder

    model = bridge(CHECKPOINTS_DIR / "organism-base")
    inst = get_task("organism_reasoning").instances(limit=6, num_fewshot=1)
    prompts = [i.prompt for i in inst]
    prefix = shared_prefix(prompts, "\n\n")
    rest = [p[len(prefix) :] for p in prompts]
    exact = [[], [dp.skip_layer(2)], [dp.zero_head(3, 1)], [dp.skip_layer(3)], [dp.zero_kv_group(1, 0)]]
    means = [[]] + [
        [dp.mean_head(layer, h, ["Q: 3 plus 4?\nA: 3 + 4 = 7. The answer is 7."])]
        for layer, h in ((3, 1), (1, 0), (0, 5))
    ]
    kw = dict(until=["Q:"], max_gen_toks=48, batch_size=3, prefix=prefix)
    plan = plan_generation(model, rest, **kw)
    for conds, decoder in ((exact, BlockDecoder(exact)), (means, HookedBlockDecoder(model, means))):
        decoder.compact = compact
        rec = Recording(decoder)
        got = plan.run(model, rec, copies=len(conds))
        texts = set()
        for cond, mine in zip(conds, got):
            with dp.ablate(model, *cond):
                ref = generate_until(model, rest, **kw)
            assert [g.text for g in mine] == [r.text for r in ref], condition_id(cond)
            assert [(g.n_tokens, g.hit_stop) for g in mine] == [(r.n_tokens, r.hit_stop) for r in ref]
            texts.add(tuple(r.text for r in ref))
        assert len(texts) == len(conds), "every condition must change the generations, or a block mix-up could pass"
        # some block other than the last loses rows while a later block's rows still run: the blocks' rows move
        assert any(
            any(len(t) < max(map(len, d.tokens)) for t in d.tokens[: len(d.tokens) - len(d.tokens) // len(conds)])
            for d in rec.calls
        ), "rows of an earlier block must end first"
        kept = sum(len(d.tokens) * max(map(len, d.tokens)) for d in rec.calls)  # every row to the last step
        needed = sum(len(t) for d in rec.calls for t in d.tokens)
        done = sum(d.row_steps for d in rec.calls)
        assert needed < kept, "rows must end at different steps for this test to mean anything"
        if compact:
            assert needed <= done < kept, type(decoder).__name__
        else:
            assert done == kept, type(decoder).__name__


def test_prefix_cache_is_shared_below_the_first_edited_layer(tiny_llama_dir: Path) -> None:
    """Rows of the block prefix cache: bitwise the unablated cache below f, the condition's own cache from f on;
    and the decoder layers run once for the shared part (sum over conditions of L - f, plus one unablated pass)."""
    model = bridge(tiny_llama_dir)
    n = model.cfg.n_layers
    conds = [[], [dp.skip_layer(2)], [dp.zero_head(1, 0)], [dp.zero_head(1, 2)], [dp.zero_kv_group(0, 1)]]
    firsts = [n, 2, 1, 1, 0]
    ids = model.tokenizer("Q: 3 plus 4?\nA: 7.\n\nQ: 2 plus 2?\nA: 4.\n\n")["input_ids"]
    shape = ForwardShape.of(model)
    decoder = BlockDecoder(conds)
    calls = []
    edits = decoder._rows(model)
    handles = [
        layer.register_forward_hook(lambda m, a, o, i=i: calls.append((i, a[0].shape[0])))
        for i, layer in enumerate(edits.plain.model.layers)
    ]
    try:
        cache = decoder.prefix_cache(model, ids, "cpu")
    finally:
        for h in handles:
            h.remove()
    # one unablated pass over every layer (the baseline needs them all), then one pass per first layer 2, 1, 0
    # with as many rows as conditions start there
    assert sum(rows for _, rows in calls) == n + (n - 2) * 1 + (n - 1) * 2 + n * 1
    unablated = HookFreeDecoder().prefix_cache(model, ids, "cpu")
    for j, (cond, f) in enumerate(zip(conds, firsts)):
        own = HookFreeDecoder(cond).prefix_cache(model, ids, "cpu")
        skipped = {iv.layer for iv in cond if iv.kind == "skip"}
        kept = [i for i in range(n) if i not in skipped]
        for layer in range(n):
            row = cache.layers[layer].keys[j : j + 1]
            if layer < f:
                assert torch.equal(row, unablated.layers[layer].keys), (condition_id(cond), layer)
            elif layer in kept:
                assert_logits_close(row, own.layers[kept.index(layer)].keys, shape, f"{condition_id(cond)} L{layer}")


def test_block_refusals(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = bridge(tiny_llama_dir)
    with pytest.raises(
        ValueError,
        match=r"mean_head:L1H0@texts:\w+ cannot run hook-free \(no exact weight edit\); kinds that can: group, head",
    ):
        BlockDecoder([[dp.mean_head(1, 0, ["some text"])]])._rows(model)
    with pytest.raises(ValueError, match="at least one condition"):
        BlockDecoder([])
    plan = plan_generation(model, ["a b c"], until=[], max_gen_toks=2, batch_size=1)
    decoder = BlockDecoder([[], [dp.skip_layer(0)]])
    with pytest.raises(ValueError, match="a batch of 1 rows cannot hold 2 equal row blocks"):
        plan.run(model, decoder, copies=1)
    with pytest.raises(ValueError, match="max_rows must be a positive integer or None, got 0"):
        dp.run_sweep(model, "organism_reasoning", "layers", out_dir=tmp_path / "x", max_rows=0, progress=False)
    assert not (tmp_path / "x").exists()


def test_run_sweep_batches_generation_conditions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_sweep's generation engine (conditions as row blocks, max_rows // batch_size per unit) = one evaluate
    per condition (engine=False), sample by sample; mean ablation (no weight edit) runs batched through hooks."""
    from depthprobe.sweep import executor as generation_engine  # where the runner's units call the engine

    units: list[int] = []
    batched = generation_engine.generate_conditions

    def counting(model, prompts, conditions, **kwargs):  # noqa: ANN001, ANN202
        units.append(len(conditions))
        return batched(model, prompts, conditions, **kwargs)

    monkeypatch.setattr(generation_engine, "generate_conditions", counting)
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    mean = dp.mean_head(3, 1, ["Q: 3 plus 4?\nA: 3 + 4 = 7. The answer is 7."])
    conds = [[dp.skip_layer(i)] for i in range(model.cfg.n_layers)] + [[dp.zero_head(3, 1)], [mean]]
    kw = dict(limit=6, batch_size=3, max_gen_toks=16, progress=False, num_fewshot=1)
    fast = dp.run_sweep(model, "organism_reasoning", conds, out_dir=tmp_path / "engine", max_rows=12, **kw)
    slow = dp.run_sweep(model, "organism_reasoning", conds, out_dir=tmp_path / "each", engine=False, **kw)
    fs = dp.load_results(tmp_path / "engine", samples=True)
    ss = dp.load_results(tmp_path / "each", samples=True)
    assert list(fs["condition"]) == list(ss["condition"])
    assert list(fs["generation"]) == list(ss["generation"])
    assert list(fs["n_generated_tokens"]) == list(ss["n_generated_tokens"])
    for metric in ("exact_match,strict-match", "exact_match,flexible-extract"):
        assert list(fast[metric]) == list(slow[metric])
    assert len(set(fs["generation"])) > 6, "the conditions must produce different generations"
    # the baseline decoded alone first, then 6 conditions in units of max_rows // batch_size (the first with the baseline)
    assert units == [1, 3, 3]
