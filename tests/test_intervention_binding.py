"""Interventions built with one model in mind, run on another, are now correct or refused (issue 16, finding 7).

Before interventions were values, ``zero_head_weights(..., group_size=)`` with another model's
group size silently zeroed the wrong KV group, ``patch_o_proj(..., target=base)`` applied to
another model patched toward *base's* weights (logits moved by 1.59 at alpha 0), and a patch
of another shape passed ``ablate`` and failed only inside the forward. Now every intervention
binds to the model it runs on, when it runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import depthprobe as dp
from depthprobe.tiny import make_tiny_model

from . import surgery
from .bridges import bridge
from .tolerance import ForwardShape, assert_logits_close


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shapes as the tiny Llama, other weights and another GQA group size (4 query heads per KV head)."""
    return make_tiny_model(tmp_path_factory.mktemp("other"), arch="llama", n_layers=3, n_kv_heads=1, seed=5)


def _ids(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, model.cfg.d_vocab, (2, 12), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


def test_head_weights_with_another_models_group_size_zero_this_models_group(
    tiny_llama_dir: Path, other_dir: Path
) -> None:
    model = bridge(tiny_llama_dir)
    assert dp.model_dims(model).group_size == 2 and dp.model_dims(bridge(other_dir)).group_size == 4
    iv = dp.zero_head_weights(1, 2, group_size=4)  # the other model's group size: head 2 would be in group 0 there
    ids = _ids(model)
    with torch.no_grad(), dp.ablate(model, iv):
        got = model(ids)
    expected = surgery.zero_head_weights(surgery.hf_copy(tiny_llama_dir), 1, 2)(ids).logits  # KV head 1 here
    assert_logits_close(got, expected, ForwardShape.of(model))
    wrong = surgery.hf_copy(tiny_llama_dir)
    dh = surgery.d_head(wrong)
    wrong.model.layers[1].self_attn.v_proj.weight.data[:dh] = 0.0  # what group 0 would have been
    assert (wrong(ids).logits - got).abs().max() > 1e-3


def test_patch_built_for_one_model_reads_the_weights_of_the_model_it_runs_on(
    tiny_llama_dir: Path, other_dir: Path
) -> None:
    base, other = bridge(tiny_llama_dir), bridge(other_dir)
    patch = dp.patch_o_proj(1, other_dir, target=base, alpha=0.0)  # alpha 0: no change, on any model
    ids = _ids(other)
    with torch.no_grad():
        plain = other(ids)
        with dp.ablate(other, patch):
            patched = other(ids)
    assert torch.equal(patched, plain)
    half = dp.patch_o_proj(1, tiny_llama_dir, target=base, alpha=0.5)
    w_other = surgery.o_proj(surgery.hf_copy(other_dir), 1)
    w_src = surgery.o_proj(surgery.hf_copy(tiny_llama_dir), 1)
    expected = surgery.set_o_proj(surgery.hf_copy(other_dir), 1, w_other + 0.5 * (w_src - w_other))(ids).logits
    with torch.no_grad(), dp.ablate(other, half):
        got = other(ids)
    assert_logits_close(got, expected, ForwardShape.of(other))


def test_patch_of_another_shape_is_refused_when_bound_not_inside_the_forward(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    small = make_tiny_model(tmp_path, arch="llama", d_model=32, n_heads=4, n_kv_heads=2)
    patch = dp.patch_o_proj(0, small)  # no model at construction: nothing to check yet
    model = bridge(tiny_llama_dir)
    entered = False
    with pytest.raises(ValueError, match=r"source shape \(32, 32\) differs from target shape \(64, 64\)"):
        with dp.ablate(model, patch):
            entered = True
    assert not entered


def test_run_directory_refuses_a_condition_of_the_same_id_with_other_intervention_data(
    tiny_llama_dir: Path, other_dir: Path, tmp_path: Path
) -> None:
    """``o_proj:L1`` from one source and from another share an id; the stored condition data tells them apart."""
    from depthprobe.results import ManifestMismatchError

    model = bridge(tiny_llama_dir)
    run = tmp_path / "run"
    opts = dict(out_dir=run, limit=3, batch_size=4, progress=False)
    first = dp.run_sweep(model, "organism_knowledge", [[dp.patch_o_proj(1, other_dir)]], **opts)
    again = dp.run_sweep(model, "organism_knowledge", [[dp.patch_o_proj(1, other_dir)]], **opts)
    assert again.attrs["computed"] == [] and again.equals(first)
    with pytest.raises(ManifestMismatchError, match=r"holds 'o_proj:L1' computed with other intervention settings"):
        dp.run_sweep(model, "organism_knowledge", [[dp.patch_o_proj(1, tiny_llama_dir, alpha=1.0)]], **opts)
