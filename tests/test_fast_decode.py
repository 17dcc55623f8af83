"""The exact hook-free decoder: token-identical to the hook path and to Hugging Face weight surgery,
selected automatically for conditions whose every intervention has an exact weight edit, and the
plain model always restored."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import depthprobe as dp
from depthprobe import adapter
from depthprobe.evaluation.fast_decode import (
    BlockDecoder,
    HookFreeDecoder,
    active_hooks,
    decoder_for,
    hook_free_allowed,
)
from depthprobe.evaluation.generation import generate_until, greedy_generate
from depthprobe.evaluation.stops import StopPolicy
from depthprobe.evaluation.tokenize import left_pad
from depthprobe.interventions.weights import edited_model, plain_model
from depthprobe.organisms import CHECKPOINTS_DIR
from tests import surgery
from tests.bridges import bridge
from tests.tolerance import ForwardShape, logit_bound, logit_scale, top2_margins

PROMPTS = [
    "Q: There are 15 trees in the grove. How many trees did the workers plant?\nA:",
    "Once upon a time, there was a little girl named Lily. She",
    "The quick brown fox",
    "Q: 1 2 3\nA:",
]
N_NEW = 12


def conditions(name: str, n_layers: int) -> list[list]:
    """Every kind with an exact weight edit, spread over the three models (each model gets five)."""
    last = n_layers - 1
    composite = [dp.skip_layer(0), dp.zero_head(1, 0), dp.zero_kv_group(last, 0)]
    return {
        "llama": [[], [dp.skip_layer(1)], [dp.zero_kv_group(1, 0)], [dp.skip_mlp(0)], composite],
        "qwen3": [[], [dp.zero_head(last, 1)], [dp.skip_attn(last)], [dp.zero_head_weights(1, 2)], composite],
        "organism-base": [
            [],
            [dp.skip_layer(1)],
            [dp.zero_head(last, 1)],
            [dp.zero_kv_group(1, 0)],
            [dp.zero_head_weights(1, 2)],
        ],
    }[name]


@pytest.fixture(scope="module", params=["llama", "qwen3", "organism-base"])
def named_model(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    if request.param == "organism-base":
        return request.param, bridge(CHECKPOINTS_DIR / "organism-base")
    return request.param, bridge(request.getfixturevalue(f"tiny_{request.param}_dir"))


def batch(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    tok = model.tokenizer
    return left_pad([tok(p)["input_ids"] for p in PROMPTS], adapter.pad_token_id(tok))


def min_margin(
    model: torch.nn.Module, condition: list, ids: torch.Tensor, mask: torch.Tensor, new: torch.Tensor
) -> float:
    """Smallest top-2 logit margin over the reference's live greedy steps (up to each row's EOS; hook path, one
    full forward), in units of the float32 logit bound (tests/tolerance.py): above 1, no kernel set can flip it."""
    full = torch.cat([ids, new], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), dp.ablate(model, *condition):
        logits = model(full, attention_mask=full_mask, position_ids=positions)
    steps = logits[:, ids.shape[1] - 1 : -1]
    eos = torch.isin(new, torch.tensor(sorted(adapter.eos_token_ids(model))))
    live = eos.int().cumsum(-1) - eos.int() == 0  # steps up to and including a row's first EOS
    return float(top2_margins(steps)[live].min()) / logit_bound(ForwardShape.of(model), logit_scale(steps))


#: min_margin must exceed this many float32 logit bounds for a token-equality test to mean anything.
MARGIN = 1.0


def test_hook_free_equals_hooks_token_for_token(named_model: tuple[str, torch.nn.Module]) -> None:
    name, model = named_model
    ids, mask = batch(model)
    moved = 0
    clean = greedy_generate(model, ids, mask, max_new_tokens=N_NEW)
    for condition in conditions(name, model.cfg.n_layers):
        with dp.ablate(model, *condition):
            ref = greedy_generate(model, ids, mask, max_new_tokens=N_NEW)
        got = greedy_generate(model, ids, mask, max_new_tokens=N_NEW, decoder=HookFreeDecoder(condition))
        assert torch.equal(got, ref), [iv.id for iv in condition]
        assert min_margin(model, condition, ids, mask, ref) > MARGIN, "a float32 near-tie makes the test meaningless"
        moved += not torch.equal(ref, clean)
    assert moved >= 3, "the conditions must change the generations for the equality to mean anything"


def test_sdpa_decoders_give_the_eager_hook_paths_tokens(named_model: tuple[str, torch.nn.Module]) -> None:
    """SDPA attention rounds differently from eager, by less than the float32 logit bound: where every live step's
    margin exceeds it, HookFreeDecoder and BlockDecoder (all conditions as row blocks) with SDPA give the eager
    hook path's tokens, so a sweep may choose SDPA for speed without changing its greedy generations."""
    name, model = named_model
    ids, mask = batch(model)
    conds = conditions(name, model.cfg.n_layers)
    assert plain_model(model, attn_implementation="sdpa").config._attn_implementation == "sdpa"
    refs = []
    for condition in conds:
        with dp.ablate(model, *condition):
            ref = greedy_generate(model, ids, mask, max_new_tokens=N_NEW)
        assert min_margin(model, condition, ids, mask, ref) > MARGIN
        got = greedy_generate(
            model, ids, mask, max_new_tokens=N_NEW, decoder=HookFreeDecoder(condition, attn_implementation="sdpa")
        )
        assert torch.equal(got, ref), [iv.id for iv in condition]
        refs.append(ref)
    k, b = len(conds), ids.shape[0]
    got = greedy_generate(
        model,
        ids.repeat(k, 1),
        mask.repeat(k, 1),
        max_new_tokens=N_NEW,
        decoder=BlockDecoder(conds, attn_implementation="sdpa"),
    )
    for j, ref in enumerate(refs):
        assert torch.equal(got[j * b : (j + 1) * b, : ref.shape[1]], ref), [iv.id for iv in conds[j]]


def test_o_proj_patch_composes_like_the_hooks() -> None:
    """patch_o_proj replaces the weight first, a head ablation in the same layer zeroes on top (as the hooks)."""
    base, source = bridge(CHECKPOINTS_DIR / "organism-base"), bridge(CHECKPOINTS_DIR / "organism-distilled")
    ids, mask = batch(base)
    for condition in (
        [dp.patch_o_proj(2, source)],
        [dp.zero_head(2, 1), dp.patch_o_proj(2, source)],
        [dp.patch_o_proj(1, source, heads=[0, 3], alpha=0.5), dp.skip_layer(3)],
    ):
        with dp.ablate(base, *condition):
            ref = greedy_generate(base, ids, mask, max_new_tokens=N_NEW)
        got = greedy_generate(base, ids, mask, max_new_tokens=N_NEW, decoder=HookFreeDecoder(condition))
        assert torch.equal(got, ref), [iv.id for iv in condition]
        assert min_margin(base, condition, ids, mask, ref) > MARGIN


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_hook_free_equals_hf_weight_surgery(arch: str, request: pytest.FixtureRequest) -> None:
    """Against an independent Hugging Face copy with the layer really deleted and the weights really zeroed."""
    path = request.getfixturevalue(f"tiny_{arch}_dir")
    model = bridge(path)
    ids, mask = batch(model)
    condition = [dp.zero_kv_group(0, 1), dp.skip_layer(1), dp.zero_head(2, 3)]
    hf = surgery.hf_copy(path)
    d = surgery.d_head(hf)
    surgery.layers(hf)[0].self_attn.v_proj.weight.data[d : 2 * d] = 0.0
    surgery.zero_o_proj_heads(hf, 2, [3])
    surgery.delete_layers(hf, [1])
    pad = adapter.pad_token_id(model.tokenizer)
    ref = hf.generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=N_NEW, eos_token_id=None, pad_token_id=pad
    )[:, ids.shape[1] :]
    got = greedy_generate(model, ids, mask, max_new_tokens=N_NEW, decoder=HookFreeDecoder(condition))
    assert torch.equal(got, ref)
    assert min_margin(model, condition, ids, mask, ref) > MARGIN


def test_prefix_cache_under_skipped_layer(tiny_llama_dir: Path) -> None:
    """generate_until with a shared prefix: the hook-free prefix cache has no entry for the removed layer."""
    model = bridge(tiny_llama_dir)
    prefix = "Q: There are 15 trees in the grove.\nA: The answer is 6.\n\n"
    questions = ["Q: What is the capital of France?\nA:", "Q: Once upon a time?\nA:", "Q: 1 2 3\nA:"]
    for condition in ([dp.skip_layer(1)], [dp.skip_layer(0), dp.zero_head(2, 0)]):
        with dp.ablate(model, *condition):
            ref = generate_until(model, questions, until=["\n\n"], max_gen_toks=12, prefix=prefix, batch_size=2)
        got = generate_until(
            model,
            questions,
            until=["\n\n"],
            max_gen_toks=12,
            prefix=prefix,
            batch_size=2,
            decoder=HookFreeDecoder(condition),
        )
        assert [g.text for g in got] == [g.text for g in ref]
        assert [g.n_tokens for g in got] == [g.n_tokens for g in ref]
        assert all(g.prefix_reused for g in got)


def test_plain_model_shares_the_bridges_tensors(tiny_qwen3_dir: Path) -> None:
    model = bridge(tiny_qwen3_dir)
    plain = plain_model(model)
    hf_params = {id(p) for p in model.original_model.parameters()}
    assert all(id(p) in hf_params for p in plain.parameters())
    assert plain_model(model) is plain  # built once per bridge


def _snapshot(plain: torch.nn.Module) -> tuple:
    layers = plain.model.layers
    return (
        len(layers),
        plain.config.num_hidden_layers,
        [layer.self_attn.layer_idx for layer in layers],
        {n: id(p) for n, p in plain.named_parameters()},
        list(getattr(plain.config, "layer_types", None) or []),
    )


def test_weights_restored_even_on_error(tiny_qwen3_dir: Path) -> None:
    model = bridge(tiny_qwen3_dir)
    plain = plain_model(model)
    before = _snapshot(plain)
    o_proj = plain.model.layers[2].self_attn.o_proj.weight.detach().clone()
    with pytest.raises(RuntimeError, match="boom"):
        with edited_model(model, dp.skip_layer(1), dp.zero_head(2, 0)) as edited:
            assert len(edited.model.layers) == 2 and edited.model.layers[1].self_attn.layer_idx == 1
            assert edited.model.layers[1].self_attn.o_proj.weight[:, : model.cfg.d_head].abs().max() == 0
            raise RuntimeError("boom")
    assert _snapshot(plain) == before
    assert torch.equal(plain.model.layers[2].self_attn.o_proj.weight, o_proj)

    class Exploding(StopPolicy):
        def is_done(self, tokens):  # noqa: ANN001, ANN201
            if len(tokens) == 3:
                raise RuntimeError("boom in the decode loop")
            return False

    ids, mask = batch(model)
    with pytest.raises(RuntimeError, match="decode loop"):
        HookFreeDecoder([dp.skip_layer(0)])(model, ids, mask, max_new_tokens=5, policy=Exploding())
    assert _snapshot(plain) == before
    clean = greedy_generate(model, ids, mask, max_new_tokens=N_NEW)
    assert torch.equal(greedy_generate(model, ids, mask, max_new_tokens=N_NEW, decoder=HookFreeDecoder()), clean)


def test_selection_and_refusals(tiny_llama_dir: Path) -> None:
    model = bridge(tiny_llama_dir)
    mean = dp.mean_head(1, 0, ["Once upon a time", "The quick brown fox"])
    assert hook_free_allowed([dp.skip_layer(0), dp.zero_head(1, 1)]) and hook_free_allowed([])
    assert not hook_free_allowed([dp.skip_layer(0), mean])
    assert isinstance(decoder_for([dp.zero_kv_group(1, 0)]), HookFreeDecoder)
    assert decoder_for([dp.skip_layer(0), mean]) is None
    assert decoder_for([dp.skip_layer(0)], hook_free=False) is None
    with pytest.raises(ValueError, match=r"mean_head:L1H0.*cannot run hook-free.*kinds that can: .*head"):
        HookFreeDecoder([mean])
    ids, mask = batch(model)
    with dp.ablate(model, dp.zero_head(1, 0)):
        assert active_hooks(model)
        with pytest.raises(ValueError, match="hooks are active"):
            greedy_generate(model, ids, mask, max_new_tokens=2, decoder=HookFreeDecoder([dp.skip_layer(0)]))
    with pytest.raises(ValueError, match="layer 7 out of range"):
        greedy_generate(model, ids, mask, max_new_tokens=2, decoder=HookFreeDecoder([dp.skip_layer(7)]))


def test_run_sweep_selects_hook_free_and_matches_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = bridge(CHECKPOINTS_DIR / "organism-base")
    used: list[tuple[str, ...]] = []
    call = HookFreeDecoder.__call__

    def counting(self, *args, **kwargs):  # noqa: ANN001, ANN202
        used.append(tuple(iv.id for iv in self.interventions))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(HookFreeDecoder, "__call__", counting)
    mean = dp.mean_head(3, 1, ["Q: 3 plus 4?\nA: 3 + 4 = 7. The answer is 7."])
    conds = [[dp.skip_layer(2)], [dp.zero_head(3, 1)], [mean]]
    # one condition per unit (engine=False): the per-condition decoder is selected per condition
    kw = dict(limit=4, batch_size=4, max_gen_toks=16, progress=False, num_fewshot=1, engine=False)
    fast = dp.run_sweep(model, "organism_reasoning", conds, out_dir=tmp_path / "fast", **kw)
    assert {u for u in used} == {(), ("skip:L2",), ("head:L3H1",)}  # mean_head has no exact edit: hooks
    used.clear()
    slow = dp.run_sweep(model, "organism_reasoning", conds, out_dir=tmp_path / "hooks", hook_free=False, **kw)
    assert not used
    fs = dp.load_results(tmp_path / "fast", samples=True)
    ss = dp.load_results(tmp_path / "hooks", samples=True)
    assert list(fs["condition"]) == list(ss["condition"])
    assert list(fs["generation"]) == list(ss["generation"])
    assert list(fast["exact_match,strict-match"]) == list(slow["exact_match,strict-match"])
    assert len(set(fs["generation"])) > 4, "the conditions must produce different generations"
    import json

    manifest = json.loads((tmp_path / "fast" / "manifest.json").read_text())
    assert manifest["attn_implementation"] == "eager"
    with pytest.raises(ValueError, match="attn_implementation applies to the hook-free decoder"):
        dp.run_sweep(
            model,
            "organism_knowledge",
            "layers",
            out_dir=tmp_path / "mc",
            attn_implementation="sdpa",
            limit=2,
            progress=False,
        )


def test_progress_reports_documents_and_tokens_per_second() -> None:
    import pandas as pd

    from depthprobe.sweep.runner import _Throughput

    rate = _Throughput()
    rate.start -= 2.0  # two seconds ago
    text = rate.add(pd.DataFrame({"n_generated_tokens": [10, 30]}))
    docs, tokens = text.split(", ")
    assert docs.endswith(" docs/s") and 0.9 < float(docs.split()[0]) <= 1.0
    assert tokens.endswith(" tok/s") and 19 <= float(tokens.split()[0]) <= 20
    assert _Throughput().add(pd.DataFrame({"prediction": [1, 2]})).endswith("docs/s")  # multiple choice: no tokens
