"""The sweep engine equals the naive computation (a full forward under ``ablate`` per condition).

Proven on a tiny random Llama, a tiny random Qwen3 (both GQA) and the real stories260K, on every
grid type, with right- and left-padded rows present: max |logit difference| within the float32
bound of ``tests/tolerance.py`` (``tests/test_float64.py`` proves the same in float64 at 1e-9).
Also: grids, ids and errors, and ``run_sweep`` against per-condition ``evaluate`` runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import depthprobe as dp
from depthprobe import sweep
from depthprobe.interventions import o_proj_accumulative, o_proj_per_layer, o_proj_reverse
from depthprobe.results import load_results
from depthprobe.sweep import (
    block_grid,
    condition_id,
    condition_logits,
    group_grid,
    head_grid,
    head_weights_grid,
    iter_condition_logits,
    layer_grid,
    parse_grid,
    run_sweep,
)

from .bridges import bridge
from .tolerance import ForwardShape, assert_loglikelihoods_close, logit_bound, logit_scale, text_logit_scale


def padded_batch(model: torch.nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four rows of random tokens: full, right-padded, left-padded, and short right-padded."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.original_model.config.vocab_size
    ids = torch.randint(3, vocab, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, :4] = 0
    mask[3, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


def naive(model, ids, mask, condition) -> torch.Tensor:
    with torch.no_grad(), dp.ablate(model, *condition):
        return model(ids, attention_mask=mask)


def assert_engine_equals_naive(model, conditions, ids, mask, **kw) -> None:
    out = condition_logits(model, ids, mask, conditions, **kw)
    assert list(out) == [condition_id(c) for c in conditions]
    baseline = naive(model, ids, mask, [])
    for cond in conditions:
        ref = naive(model, ids, mask, cond)
        got = out[condition_id(cond)]
        assert got.shape == ref.shape
        diff = (got - ref).abs().max().item()
        bound = logit_bound(ForwardShape.of(model), logit_scale(ref))
        assert diff <= bound, f"{condition_id(cond)}: max |diff| {diff:.3g} > float32 bound {bound:.3g}"
        if len(cond):  # the comparison is not vacuous: the condition changes the logits
            assert (ref - baseline).abs().max().item() > 1e-4, f"{condition_id(cond)} left the logits unchanged"


def o_proj_source(model: torch.nn.Module, tmp_path: Path) -> Path:
    """A checkpoint directory holding only random o_proj weights of the model's shape."""
    dims = dp.model_dims(model)
    g = torch.Generator().manual_seed(7)
    tensors = {
        f"model.layers.{layer}.self_attn.o_proj.weight": 0.1
        * torch.randn(dims.d_model, dims.n_heads * dims.d_head, generator=g)
        for layer in range(dims.n_layers)
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


GRIDS = ["layers", "heads", "groups", "head_weights", "blocks", "mixed"]


def make_grid(model, kind: str) -> list[list[dp.Intervention]]:
    n = dp.model_dims(model).n_layers
    if kind == "layers":
        return [[]] + layer_grid(model)
    if kind == "heads":
        return head_grid(model, 0) + head_grid(model, n - 1)
    if kind == "groups":
        return group_grid(model, 1) + group_grid(model, n - 1)
    if kind == "head_weights":
        return head_weights_grid(model, n - 1) + head_weights_grid(model, 0)
    if kind == "blocks":
        return block_grid(model, 2) + block_grid(model, n)
    return [  # conditions mixing kinds and layers, including an empty tail (last layer skipped)
        [dp.skip_attn(0)],
        [dp.skip_mlp(n - 1)],
        [dp.zero_head(1, 0), dp.skip_layer(n - 1)],
        [dp.skip_layer(0), dp.zero_kv_group(n - 1, 1)],
        [dp.skip_layer(n - 1)],
    ]


@pytest.mark.parametrize("grid", GRIDS)
def test_engine_equals_naive(model_dir: Path, grid: str) -> None:
    model = bridge(model_dir)
    ids, mask = padded_batch(model)
    assert_engine_equals_naive(model, make_grid(model, grid), ids, mask)


@pytest.mark.parametrize("schedule", [o_proj_per_layer, o_proj_accumulative, o_proj_reverse])
def test_engine_equals_naive_o_proj(model_dir: Path, tmp_path: Path, schedule) -> None:
    model = bridge(model_dir)
    ids, mask = padded_batch(model, seed=1)
    conditions = schedule(model, o_proj_source(model, tmp_path))
    assert_engine_equals_naive(model, conditions, ids, mask)


def test_engine_row_blocks_bounded_by_max_rows(tiny_qwen3_dir: Path) -> None:
    model = bridge(tiny_qwen3_dir)
    ids, mask = padded_batch(model, seed=2)
    # 4 rows per condition, at most 8 rows per forward: heads of one layer run two at a time
    assert_engine_equals_naive(model, head_grid(model, 2) + group_grid(model, 1), ids, mask, max_rows=8)
    with pytest.raises(ValueError, match="max_rows=2 is smaller than the batch"):
        condition_logits(model, ids, mask, head_grid(model, 2), max_rows=2)


def test_engine_without_mask_and_restores_model(tiny_llama_dir: Path) -> None:
    model = bridge(tiny_llama_dir)
    ids, _ = padded_batch(model, seed=3)
    layers = model.original_model.model.layers
    assert_engine_equals_naive(model, [[]] + layer_grid(model) + head_grid(model, 1), ids, None)
    assert model.original_model.model.layers is layers and len(layers) == dp.model_dims(model).n_layers
    # a failing condition (bad head) leaves the model whole too
    with pytest.raises(ValueError, match="out of range"):
        list(iter_condition_logits(model, ids, None, [[dp.zero_head(1, 99)]]))
    assert model.original_model.model.layers is layers


def test_engine_runs_only_the_tail(tiny_llama_dir: Path) -> None:
    """Blocks before a condition's first layer run once (the baseline), skipped layers never for the condition."""
    model = bridge(tiny_llama_dir)
    ids, mask = padded_batch(model)
    calls = {layer: 0 for layer in range(3)}

    def count(layer):
        def hook(x, hook):
            calls[layer] += 1

        return hook

    with model.hooks(fwd_hooks=[(f"blocks.{l}.hook_resid_pre", count(l)) for l in range(3)]):
        condition_logits(model, ids, mask, [[dp.skip_layer(1)]] + head_grid(model, 2))
    # baseline: 1 each; skip:L1 runs layer 2 only; the 4 heads of layer 2 run as one batched pass
    assert calls == {0: 1, 1: 1, 2: 3}


def test_condition_ids_and_grids(tiny_llama_dir: Path) -> None:
    model = bridge(tiny_llama_dir)
    assert condition_id([]) == "baseline"
    assert condition_id([dp.zero_head(1, 2), dp.skip_layer(0)]) == "head:L1H2+skip:L0"
    assert [condition_id(c) for c in layer_grid(model)] == ["skip:L0", "skip:L1", "skip:L2"]
    assert [condition_id(c) for c in head_grid(model, 1)] == [f"head:L1H{h}" for h in range(4)]
    assert [condition_id(c) for c in group_grid(model, 2)] == ["group:L2G0", "group:L2G1"]
    assert [condition_id(c) for c in block_grid(model, 2)] == ["skip:L0+skip:L1", "skip:L1+skip:L2"]
    assert [condition_id(c) for c in parse_grid(model, "heads:0")] == [f"head:L0H{h}" for h in range(4)]
    with pytest.raises(ValueError, match=r"layer 5 out of range; the model has layers 0\.\.2"):
        head_grid(model, 5)
    with pytest.raises(ValueError, match=r"valid: 1\.\.3"):
        block_grid(model, 4)
    with pytest.raises(ValueError, match="unknown grid"):
        parse_grid(model, "neurons")
    with pytest.raises(ValueError, match="duplicate conditions: skip:L0"):
        condition_logits(model, *padded_batch(model), [[dp.skip_layer(0)], [dp.skip_layer(0)]])


# ---------------------------------------------------------------------------------------
# run_sweep on the real evaluator.


def _evaluate():
    try:
        from depthprobe.evaluator import evaluate
    except ImportError as err:
        pytest.skip(f"depthprobe.evaluation is not available yet ({err})")
    return evaluate


def test_run_sweep_matches_per_condition_evaluate(tiny_llama_dir: Path, tmp_path: Path) -> None:
    evaluate = _evaluate()
    model = bridge(tiny_llama_dir)
    opts = dict(n_pairs=4, n_examples=4, seed=3)
    conditions = [[dp.skip_layer(0)], [dp.zero_kv_group(2, 1)]]
    run = tmp_path / "run"
    df = run_sweep(model, "kv_retrieval", conditions, out_dir=run, limit=4, batch_size=4, progress=False, **opts)
    assert list(df["condition"]) == ["baseline", "skip:L0", "group:L2G1"]
    assert df.equals(load_results(run))
    samples = load_results(run, samples=True)
    base_acc = None
    for cond in [[]] + conditions:
        with dp.ablate(model, *cond):
            ref = evaluate(model, "kv_retrieval", limit=4, batch_size=4, **opts)
            scale = text_logit_scale(
                model, [p + c for p, cs in zip(ref.samples["prompt"], ref.samples["choices"]) for c in cs]
            )
        row = df[df["condition"] == condition_id(cond)].iloc[0]
        assert row["acc"] == pytest.approx(ref.metrics["acc"])
        base_acc = ref.metrics["acc"] if not cond else base_acc
        assert row["delta_acc"] == pytest.approx(ref.metrics["acc"] - base_acc)
        got = samples[samples["condition"] == condition_id(cond)]
        assert len(got) == 4
        for a, b, n in zip(got["loglikelihoods"], ref.samples["loglikelihoods"], ref.samples["n_tokens"]):
            assert_loglikelihoods_close(list(a), list(b), list(n), ForwardShape.of(model), scale, condition_id(cond))
    # the conditions differ: each ran under its own interventions
    lls = samples.groupby("condition")["loglikelihoods"].first()
    assert lls["skip:L0"] != pytest.approx(lls["baseline"], abs=1e-4)
    assert lls["group:L2G1"] != pytest.approx(lls["baseline"], abs=1e-4)
    # re-running resumes (nothing re-evaluated, nothing duplicated); another limit is refused
    stamps = {p: p.stat().st_mtime_ns for p in (run / "conditions").iterdir()}
    again = run_sweep(model, "kv_retrieval", conditions, out_dir=run, limit=4, batch_size=4, progress=False, **opts)
    assert again.equals(df) and {p: p.stat().st_mtime_ns for p in (run / "conditions").iterdir()} == stamps
    with pytest.raises(ValueError, match="limit=4, but this command has limit=3"):
        run_sweep(model, "kv_retrieval", conditions, out_dir=run, limit=3, progress=False, **opts)
    with pytest.raises(ValueError, match=r"layer 7 out of range; the model has layers 0\.\.2"):
        run_sweep(model, "kv_retrieval", "heads:7", out_dir=tmp_path / "bad", limit=4, progress=False, **opts)


def test_score_conditions_equals_evaluator_under_ablate(tiny_qwen3_dir: Path) -> None:
    """Engine log-likelihood scoring = the evaluator's ``score_choices`` run under ``ablate`` per condition."""
    try:
        from depthprobe.evaluation.loglikelihood import score_choices
    except ImportError as err:
        pytest.skip(f"depthprobe.evaluation is not available yet ({err})")
    model = bridge(tiny_qwen3_dir)
    requests = [
        ("Question: What is the capital of France?\nAnswer:", [" Paris", " the quick brown fox", " 42"]),
        ("Once upon a time, there was a little girl named", [" Lily", " Lily. She loved to play"]),
        ("A. B. C. D. Answer:", [" A", " B", " C", " D"]),
    ]
    conditions = [[]] + layer_grid(model) + head_grid(model, 2) + [[dp.zero_kv_group(1, 0)]]
    got = sweep.score_conditions(model, requests, conditions, batch_size=2)
    assert list(got) == [condition_id(c) for c in conditions]
    for cond in conditions:
        with dp.ablate(model, *cond):
            ref, _ = score_choices(model, requests, batch_size=2)
            scale = text_logit_scale(model, [c + x for c, xs in requests for x in xs])
        for g, r in zip(got[condition_id(cond)], ref):
            assert_loglikelihoods_close(
                list(g.loglikelihoods),
                list(r.loglikelihoods),
                list(r.n_tokens),
                ForwardShape.of(model),
                scale,
                condition_id(cond),
            )
            assert (g.is_greedy, g.n_tokens, g.truncated) == (r.is_greedy, r.n_tokens, r.truncated)
    assert got["skip:L0"][1].loglikelihoods != pytest.approx(got["baseline"][1].loglikelihoods, abs=1e-3)
