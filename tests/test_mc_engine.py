"""The multiple-choice engine with context reuse equals one evaluator run per condition under ``ablate``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import depthprobe as dp
from depthprobe.evaluation.loglikelihood import score_choices
from depthprobe.organisms import CHECKPOINTS_DIR
from depthprobe.sweep import condition_id, head_grid, layer_grid, score_conditions_reuse
from depthprobe.tasks import get_task
from depthprobe.tiny import make_tiny_model
from tests.bridges import bridge


def requests(task: str, limit: int, **options) -> list[tuple[str, list[str]]]:
    return [(i.prompt, list(i.continuations)) for i in get_task(task, **options).instances(limit=limit)]


def assert_equal_to_evaluator(model, reqs, conditions, **kw) -> None:
    got = score_conditions_reuse(model, reqs, conditions, **kw)
    assert list(got) == [condition_id(c) for c in conditions]
    moved = 0
    base = None
    for cond in conditions:
        with dp.ablate(model, *cond):
            ref, _ = score_choices(model, reqs, batch_size=kw.get("batch_size", 16))
        base = ref if base is None else base
        for r, g in zip(ref, got[condition_id(cond)]):
            assert r.is_greedy == g.is_greedy and r.n_tokens == g.n_tokens and r.truncated == g.truncated
            assert max(abs(a - b) for a, b in zip(r.loglikelihoods, g.loglikelihoods)) <= 1e-5, condition_id(cond)
        moved += any(r.loglikelihoods != b.loglikelihoods for r, b in zip(ref, base))
    assert moved >= len(conditions) // 2, "the conditions must change the scores"


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_layers_heads_groups_equal_the_evaluator(arch: str, request: pytest.FixtureRequest) -> None:
    model = bridge(request.getfixturevalue(f"tiny_{arch}_dir"))
    conditions = (
        [[]] + layer_grid(model) + head_grid(model, 1) + [[dp.zero_kv_group(1, 0), dp.skip_layer(2)], [dp.skip_attn(0)]]
    )
    # organism_openbook: multi-token choices on a shared context; batch 3 and max_rows 6 cut batches and forwards
    assert_equal_to_evaluator(model, requests("organism_openbook", 5), conditions, batch_size=3, max_rows=6)


def test_single_token_choices_and_stateful_patches() -> None:
    """Retrieval's one-token values (first-token path only) and o_proj patches (stateful hooks) on the organism."""
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    source = bridge(CHECKPOINTS_DIR / "organism-distilled")
    conditions = [
        [],
        [dp.skip_layer(0)],
        [dp.zero_kv_group(1, 0)],
        [dp.patch_o_proj(1, source)],
        [dp.patch_o_proj(1, source), dp.patch_o_proj(2, source)],
        [dp.mean_head(1, 2, ["Memorize the following dictionary: a:1 b:2"])],
    ]
    reqs = requests("organism_retrieval", 4)
    assert_equal_to_evaluator(model, reqs, conditions, batch_size=4)
    assert_equal_to_evaluator(model, requests("organism_openbook", 3), conditions[:4], batch_size=2, max_rows=2)


def test_truncated_documents_take_the_window_path(tmp_path: Path) -> None:
    model = dp.load_model(make_tiny_model(tmp_path, arch="llama", max_position_embeddings=40, seed=2))
    reqs = requests("organism_openbook", 3) + [
        ("Q: 1 2 3\nA:", [" 6", " The answer is 6."]),
        ("The quick brown fox", [" jumps over", " the lazy dog"]),
    ]
    got = score_conditions_reuse(model, reqs, [[]], batch_size=4)
    assert any(s.truncated for s in got["baseline"]) and not all(s.truncated for s in got["baseline"])
    assert_equal_to_evaluator(model, reqs, [[], [dp.skip_layer(1)], [dp.zero_head(2, 0)]], batch_size=4)


def test_bad_input(tiny_llama_dir: Path) -> None:
    model = bridge(tiny_llama_dir)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        score_conditions_reuse(model, [("a", [" b"])], [[]], batch_size=0)
    with pytest.raises(ValueError, match="duplicate conditions: skip:L0"):
        score_conditions_reuse(model, [("a", [" b"])], [[dp.skip_layer(0)], [dp.skip_layer(0)]])
    with pytest.raises(ValueError, match="layer 9 out of range"):
        score_conditions_reuse(model, [("a", [" b"])], [[dp.skip_layer(9)]])
    assert torch.is_grad_enabled()
