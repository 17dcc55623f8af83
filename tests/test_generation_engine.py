"""Generation sweeps with conditions batched as row blocks equal one generate_until per condition under ablate."""

from __future__ import annotations

from pathlib import Path

import pytest

import depthprobe as dp
from depthprobe.engine.generation import generate_conditions
from depthprobe.evaluation.generation import generate_until
from depthprobe.evaluator import shared_prefix
from depthprobe.organisms import CHECKPOINTS_DIR
from depthprobe.sweep import condition_id
from depthprobe.tasks import get_task
from tests.bridges import bridge


def check(model, prompts, conditions, prefix, max_rows=None, **kw) -> None:
    got = generate_conditions(model, prompts, conditions, prefix=prefix, max_rows=max_rows, **kw)
    texts = set()
    for cond in conditions:
        with dp.ablate(model, *cond):
            ref = generate_until(model, prompts, prefix=prefix, **kw)
        mine = got[condition_id(cond)]
        assert [g.text for g in mine] == [r.text for r in ref], condition_id(cond)
        assert [(g.n_tokens, g.hit_stop, g.prefix_reused) for g in mine] == [
            (r.n_tokens, r.hit_stop, r.prefix_reused) for r in ref
        ]
        texts.update(r.text for r in ref)
    assert len(texts) > len(prompts), "the conditions must change the generations"


def test_organism_reasoning_layer_and_head_conditions() -> None:
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    inst = get_task("organism_reasoning").instances(limit=4, num_fewshot=1)
    prompts = [i.prompt for i in inst]
    prefix = shared_prefix(prompts, "\n\n")
    assert prefix
    conditions = [
        [],
        [dp.skip_layer(0)],
        [dp.skip_layer(2)],
        [dp.zero_head(3, 1)],
        [dp.zero_kv_group(1, 0)],
        [dp.mean_head(2, 0, ["Q: 3 plus 4?\nA: The answer is 7."])],
    ]
    check(
        model,
        [p[len(prefix) :] for p in prompts],
        conditions,
        prefix,
        until=["Q:", "\n\n"],
        max_gen_toks=16,
        batch_size=2,
        max_rows=6,
    )


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tiny_models_without_prefix(arch: str, request: pytest.FixtureRequest) -> None:
    model = bridge(request.getfixturevalue(f"tiny_{arch}_dir"))
    prompts = ["Q: What is the capital of France?\nA:", "Once upon a time", "Q: 1 2 3\nA:"]
    conditions = [[], [dp.skip_layer(1)], [dp.zero_head(2, 1)], [dp.zero_kv_group(0, 0), dp.skip_mlp(2)]]
    check(model, prompts, conditions, None, until=["\n\n"], max_gen_toks=10, batch_size=2)


def test_bad_input(tiny_llama_dir: Path) -> None:
    model = bridge(tiny_llama_dir)
    with pytest.raises(ValueError, match="duplicate conditions: skip:L0"):
        generate_conditions(model, ["a"], [[dp.skip_layer(0)], [dp.skip_layer(0)]], until=[])
    with pytest.raises(ValueError, match="layer 5 out of range"):
        generate_conditions(model, ["a"], [[dp.skip_layer(5)]], until=[])
