"""Float64 twins of the exactness claims: interventions = weight surgery, engine = naive forward,
evaluator = naive scoring, at <= 1e-9 absolute.

In float64 the rounding of these models is about 1e-14, so a real bug (a wrong head, a missed
layer, a misplaced window) cannot hide under the tolerance, and no CPU kernel set or thread
count changes the verdict. The float32 versions of these tests (what users run) compare under
the derived bound of ``tests/tolerance.py``; this file is what makes that bound safe.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import depthprobe as dp
from depthprobe.evaluation.loglikelihood import encode_pair, model_max_length, score_choices
from depthprobe.sweep import (
    condition_id,
    condition_logits,
    group_grid,
    head_grid,
    head_weights_grid,
    layer_grid,
    score_conditions,
)

from . import surgery
from .tolerance import FLOAT64_ATOL

F64 = torch.float64


@pytest.fixture(autouse=True)
def float64_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep attention in float64: Hugging Face's eager attention computes its softmax in float32
    (``softmax(..., dtype=torch.float32)``) whatever the model's dtype, which would put float32
    rounding back into a float64 model. The same for the reference and for depthprobe."""
    softmax = torch.nn.functional.softmax

    def softmax64(x, dim=None, _stacklevel=3, dtype=None):
        if dtype == torch.float32 and x.dtype == F64:
            dtype = F64
        return softmax(x, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

    monkeypatch.setattr(torch.nn.functional, "softmax", softmax64)


_BRIDGES: dict[Path, torch.nn.Module] = {}


def bridge64(path: Path) -> torch.nn.Module:
    if path not in _BRIDGES:
        _BRIDGES[path] = dp.load_model(path, dtype=F64, device="cpu")
    return _BRIDGES[path]


@pytest.fixture(scope="module")
def o_proj_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A checkpoint directory with other o_proj weights of the model's shape."""
    model = bridge64(model_dir)
    dims = dp.model_dims(model)
    g = torch.Generator().manual_seed(11)
    out = tmp_path_factory.mktemp("o_proj64")
    save_file(
        {
            f"model.layers.{layer}.self_attn.o_proj.weight": 0.1
            * torch.randn(dims.d_model, dims.n_heads * dims.d_head, generator=g)
            for layer in range(dims.n_layers)
        },
        str(out / "model.safetensors"),
    )
    return out


def _o_proj(source: Path, layer: int) -> torch.Tensor:
    return load_file(str(source / "model.safetensors"))[f"model.layers.{layer}.self_attn.o_proj.weight"].to(F64)


def tokens(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, model.cfg.d_vocab, (2, 13), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


def _cases(model, source: Path):
    r = dp.model_dims(model).group_size

    def set_o_proj(m, layer, alpha):
        w_tgt = surgery.o_proj(m, layer)
        return surgery.set_o_proj(m, layer, w_tgt + alpha * (_o_proj(source, layer) - w_tgt))

    def zero(m, name):
        for layer in surgery.layers(m)[1:2]:
            getattr(*{"o": (layer.self_attn, "o_proj"), "down": (layer.mlp, "down_proj")}[name]).weight.data.zero_()
        return m

    return {
        "skip": ([dp.skip_layer(1)], lambda m: surgery.delete_layers(m, [1])),
        "skip_two": (dp.skip_layers(0, 2), lambda m: surgery.delete_layers(m, [0, 2])),
        "skip_attn": ([dp.skip_attn(1)], lambda m: zero(m, "o")),
        "skip_mlp": ([dp.skip_mlp(1)], lambda m: zero(m, "down")),
        "head": ([dp.zero_head(1, 3)], lambda m: surgery.zero_o_proj_heads(m, 1, [3])),
        "group": ([dp.zero_kv_group(2, 1)], lambda m: surgery.zero_o_proj_heads(m, 2, range(r, 2 * r))),
        "head_weights": ([dp.zero_head_weights(2, 2, group_size=r)], lambda m: surgery.zero_head_weights(m, 2, 2)),
        "o_proj": ([dp.patch_o_proj(1, source, target=model, alpha=0.5)], lambda m: set_o_proj(m, 1, 0.5)),
        "composed": (
            [dp.skip_layer(2), dp.zero_head(0, 1)],
            lambda m: surgery.delete_layers(surgery.zero_o_proj_heads(m, 0, [1]), [2]),
        ),
    }


CASES = ["skip", "skip_two", "skip_attn", "skip_mlp", "head", "group", "head_weights", "o_proj", "composed"]


@pytest.mark.parametrize("case", CASES)
def test_intervention_equals_weight_surgery(model_dir: Path, o_proj_dir: Path, case: str) -> None:
    model = bridge64(model_dir)
    ivs, edit = _cases(model, o_proj_dir)[case]
    ids = tokens(model)
    with torch.no_grad():
        expected = edit(surgery.hf_copy(model_dir, F64))(ids).logits
        unedited = surgery.pristine(str(model_dir), F64)(ids).logits
        with dp.ablate(model, *ivs):
            got = model(ids)
    assert got.dtype == F64
    assert (got - expected).abs().max().item() <= FLOAT64_ATOL
    assert (expected - unedited).abs().max().item() > 1e-3, "the edit must change the logits"


@pytest.mark.parametrize("case", ["skip", "group", "o_proj"])
def test_cached_generation_equals_surgery(model_dir: Path, o_proj_dir: Path, case: str) -> None:
    model = bridge64(model_dir)
    ivs, edit = _cases(model, o_proj_dir)[case]
    ids = model.tokenizer("Once upon a time", return_tensors="pt").input_ids
    ref = edit(surgery.hf_copy(model_dir, F64))
    ref.generation_config.eos_token_id = None
    expected = ref.generate(ids, max_new_tokens=16, do_sample=False, use_cache=True, pad_token_id=0)
    with dp.ablate(model, *ivs):
        got = model.generate(
            ids,
            max_new_tokens=16,
            do_sample=False,
            verbose=False,
            use_past_kv_cache=True,
            stop_at_eos=False,
            return_type="tokens",
        )
    assert torch.equal(got, expected)


def test_engine_equals_naive_forward(model_dir: Path, o_proj_dir: Path) -> None:
    """Every grid type through the tail-only engine, with a right-padded row (compared at real tokens).

    No left-padded row: in float64, eager attention turns a fully masked query row into NaN,
    which then reaches every position of that row through zero attention weights (in the
    plain Hugging Face model too); the float32 engine test covers left padding.
    """
    model = bridge64(model_dir)
    last = dp.model_dims(model).n_layers - 1
    conditions = (
        [[]]
        + layer_grid(model)
        + head_grid(model, last)
        + group_grid(model, 1)
        + head_weights_grid(model, 0)[:2]
        + [[dp.patch_o_proj(1, o_proj_dir, target=model)], [dp.skip_layer(0), dp.zero_head(2, 1)]]
    )
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, model.cfg.d_vocab, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    out = condition_logits(model, ids, mask, conditions, max_rows=7)
    for cond in conditions:
        with torch.no_grad(), dp.ablate(model, *cond):
            ref = model(ids, attention_mask=mask)
        real = mask.bool()
        assert torch.isfinite(ref[real]).all()
        diff = (out[condition_id(cond)][real] - ref[real]).abs().max().item()
        assert diff <= FLOAT64_ATOL, f"{condition_id(cond)}: {diff:.3g}"


REQUESTS = [
    ("Question: What is the capital of France?\nAnswer:", [" Paris", " London is big", " A", " 42 and 43"]),
    ("Once upon a time, there was a little girl named Lily. She loved to ", ["play", "run outside in the park"]),
    ("A. B. C. D. Answer:", [" A", " B", " C", " D"]),
    ("The quick brown fox", [" jumps over the lazy dog.", " sat", " 1 2 3 4 5 6 7 8 9 10 11"]),
]


def naive_ll(hf, tok, context: str, continuation: str, max_len: int) -> float:
    ctx, cont = encode_pair(tok, context, continuation)
    window = (ctx + cont)[-(max_len + 1) :][:-1]
    with torch.no_grad():
        logprobs = torch.log_softmax(hf(torch.tensor([window])).logits, dim=-1)[0]
    rows = logprobs[len(window) - len(cont) :]
    return rows.gather(1, torch.tensor(cont)[:, None]).sum().item()


@pytest.mark.parametrize("batch_size", [1, 64])
def test_evaluator_equals_naive_scoring(model_dir: Path, batch_size: int) -> None:
    model = bridge64(model_dir)
    hf = surgery.pristine(str(model_dir), F64)
    max_len = model_max_length(hf, model.tokenizer)
    results, _ = score_choices(model, REQUESTS, batch_size=batch_size)
    for (context, conts), res in zip(REQUESTS, results):
        for cont, ll in zip(conts, res.loglikelihoods):
            assert abs(ll - naive_ll(hf, model.tokenizer, context, cont, max_len)) <= FLOAT64_ATOL, (context, cont)


def test_engine_scoring_equals_evaluator_under_ablate(model_dir: Path) -> None:
    model = bridge64(model_dir)
    conditions = [[]] + layer_grid(model) + head_grid(model, 1)[:3] + [[dp.zero_kv_group(0, 0)]]
    got = score_conditions(model, REQUESTS, conditions, batch_size=3)
    for cond in conditions:
        with dp.ablate(model, *cond):
            ref, _ = score_choices(model, REQUESTS, batch_size=3)
        for g, r in zip(got[condition_id(cond)], ref):
            assert max(abs(a - b) for a, b in zip(g.loglikelihoods, r.loglikelihoods)) <= FLOAT64_ATOL
            assert g.is_greedy == r.is_greedy
