"""Every intervention equals the corresponding weight surgery on a separate Hugging Face copy.

Each class proves one feature on a tiny random Llama, a tiny random Qwen3 (both GQA) and the
real stories260K: max |logit difference| within the float32 bound of ``tests/tolerance.py``, in
a plain forward, and identical tokens in KV-cached greedy generation (no step a float32 near-tie).
``tests/test_float64.py`` proves the same equalities in float64 at 1e-9.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import depthprobe as dp
from depthprobe.interventions import (
    collect_hooks,
    load_o_proj_weights,
    o_proj_accumulative,
    o_proj_per_layer,
    o_proj_reverse,
    validate,
)
from depthprobe.tiny import make_tiny_model

from . import surgery
from .bridges import bridge
from .tolerance import ForwardShape, assert_logits_close, assert_same_greedy, hf_greedy, logit_bound, logit_scale


def atol(model, logits: torch.Tensor) -> float:
    """The float32 bound on |Δ logit| at the magnitude of ``logits`` (tests/tolerance.py)."""
    return logit_bound(ForwardShape.of(model), logit_scale(logits))


def tokens(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    """A batch of two random sequences starting with BOS."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.cfg.d_vocab, (2, 14), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def assert_equal_to_surgery(path: Path, interventions: list, edit) -> None:
    """The bridge under ``interventions`` equals the HF copy after ``edit`` (and differs from the unedited model)."""
    model = bridge(path)
    ids = tokens(model)
    ref = edit(surgery.hf_copy(path))
    with torch.no_grad():
        expected = ref(ids).logits
        unedited = surgery.pristine(str(path))(ids).logits
        with dp.ablate(model, *interventions):
            got = model(ids)
    assert_logits_close(got, expected, ForwardShape.of(model))
    assert max_diff(expected, unedited) > 1e-3, "the edit must change the logits, or this test proves nothing"


def greedy_bridge(model, ids: torch.Tensor, n: int, interventions=()) -> torch.Tensor:
    with dp.ablate(model, *interventions):
        return model.generate(
            ids,
            max_new_tokens=n,
            do_sample=False,
            verbose=False,
            use_past_kv_cache=True,
            stop_at_eos=False,
            return_type="tokens",
        )


def greedy_hf(ref, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face greedy decoding with its own KV cache, not stopping at EOS (as ``greedy_bridge``):
    the whole sequence and the logits each new token was chosen from."""
    ref.generation_config.eos_token_id = None
    new, logits = hf_greedy(ref, ids, n, use_cache=True, pad_token_id=0)
    return torch.cat([ids, new], dim=1), logits


def assert_same_tokens(got: torch.Tensor, expected: tuple[torch.Tensor, torch.Tensor], ref, n_prompt: int) -> None:
    tokens, logits = expected
    assert_same_greedy(got[:, n_prompt:], tokens[:, n_prompt:], logits, ForwardShape.of(ref))
    assert torch.equal(got, tokens)


def prompt_ids(model) -> torch.Tensor:
    return model.tokenizer("Once upon a time", return_tensors="pt").input_ids


class TestSkipLayer:
    @pytest.mark.parametrize("layer", [0, 1, 2])
    def test_equals_deleting_the_layer(self, model_dir: Path, layer: int) -> None:
        assert_equal_to_surgery(model_dir, [dp.skip_layer(layer)], lambda m: surgery.delete_layers(m, [layer]))

    def test_several_layers(self, model_dir: Path) -> None:
        assert_equal_to_surgery(model_dir, dp.skip_layers(0, 2), lambda m: surgery.delete_layers(m, [0, 2]))

    def test_resid_post_equals_resid_pre(self, model_dir: Path) -> None:
        model = bridge(model_dir)
        with dp.ablate(model, dp.skip_layer(1)):
            _, cache = model.run_with_cache(tokens(model), names_filter=lambda n: "resid" in n)
        assert torch.equal(cache["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_pre"])

    def test_skip_attn_equals_zero_o_proj(self, model_dir: Path) -> None:
        def edit(m):
            surgery.layers(m)[1].self_attn.o_proj.weight.data.zero_()
            return m

        assert_equal_to_surgery(model_dir, [dp.skip_attn(1)], edit)

    def test_skip_mlp_equals_zero_down_proj(self, model_dir: Path) -> None:
        def edit(m):
            surgery.layers(m)[1].mlp.down_proj.weight.data.zero_()
            return m

        assert_equal_to_surgery(model_dir, [dp.skip_mlp(1)], edit)


class TestZeroHead:
    @pytest.mark.parametrize("layer,head", [(0, 0), (1, 3), (2, 1)])
    def test_equals_zeroed_o_proj_columns(self, model_dir: Path, layer: int, head: int) -> None:
        assert_equal_to_surgery(
            model_dir, [dp.zero_head(layer, head)], lambda m: surgery.zero_o_proj_heads(m, layer, [head])
        )

    def test_heads_of_one_group_differ(self, model_dir: Path) -> None:
        """A true per-head ablation: the two heads sharing KV head 0 give different results."""
        model = bridge(model_dir)
        ids = tokens(model)
        with dp.ablate(model, dp.zero_head(1, 0)):
            a = model(ids)
        with dp.ablate(model, dp.zero_head(1, 1)):
            b = model(ids)
        assert max_diff(a, b) > 1e-4


class TestZeroKVGroup:
    @pytest.mark.parametrize("layer,group", [(0, 0), (2, 1)])
    def test_equals_zeroed_o_proj_columns_of_the_group(self, model_dir: Path, layer: int, group: int) -> None:
        r = dp.model_dims(bridge(model_dir)).group_size
        heads = range(group * r, (group + 1) * r)
        assert_equal_to_surgery(
            model_dir, [dp.zero_kv_group(layer, group)], lambda m: surgery.zero_o_proj_heads(m, layer, heads)
        )

    def test_equals_zeroing_each_head_of_the_group(self, model_dir: Path) -> None:
        model = bridge(model_dir)
        r = dp.model_dims(model).group_size
        ids = tokens(model)
        with dp.ablate(model, dp.zero_kv_group(1, 1)):
            grouped = model(ids)
        with dp.ablate(model, [dp.zero_head(1, h) for h in range(r, 2 * r)]):
            per_head = model(ids)
        assert max_diff(grouped, per_head) <= atol(model, per_head)


class TestZeroHeadWeights:
    @pytest.mark.parametrize("layer,head", [(0, 1), (2, 2)])
    def test_equals_the_studys_weight_zeroing(self, model_dir: Path, layer: int, head: int) -> None:
        r = dp.model_dims(bridge(model_dir)).group_size
        assert_equal_to_surgery(
            model_dir,
            [dp.zero_head_weights(layer, head, group_size=r)],
            lambda m: surgery.zero_head_weights(m, layer, head),
        )

    def test_silences_the_whole_group(self, model_dir: Path) -> None:
        """Under GQA every head of a group scores the same: the whole group is silenced."""
        model = bridge(model_dir)
        r = dp.model_dims(model).group_size
        assert r > 1
        ids = tokens(model)
        with dp.ablate(model, dp.zero_head_weights(1, 0, group_size=r)):
            first = model(ids)
        with dp.ablate(model, dp.zero_head_weights(1, r - 1, group_size=r)):
            last = model(ids)
        with dp.ablate(model, dp.zero_kv_group(1, 0)):
            group = model(ids)
        assert max_diff(first, last) <= atol(model, last)
        assert max_diff(first, group) <= atol(model, group)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A second checkpoint with the same architecture and shapes and other weights."""
    src = surgery.hf_copy(model_dir)
    g = torch.Generator().manual_seed(7)
    for layer in surgery.layers(src):
        w = layer.self_attn.o_proj.weight
        w.data = torch.randn(w.shape, generator=g) * w.std()
    out = tmp_path_factory.mktemp("o_proj_source")
    src.save_pretrained(out)
    return out


class TestPatchOProj:
    def test_replacement_equals_swapped_weights(self, model_dir: Path, source_dir: Path) -> None:
        w_src = surgery.o_proj(surgery.hf_copy(source_dir), 1)
        iv = dp.patch_o_proj(1, source_dir, target=bridge(model_dir))
        assert iv.id == "o_proj:L1"
        assert_equal_to_surgery(model_dir, [iv], lambda m: surgery.set_o_proj(m, 1, w_src))

    @pytest.mark.parametrize("alpha", [0.5, -1.0, 2.0])
    def test_delta_with_alpha(self, model_dir: Path, source_dir: Path, alpha: float) -> None:
        w_src = surgery.o_proj(surgery.hf_copy(source_dir), 2)
        w_tgt = surgery.o_proj(surgery.hf_copy(model_dir), 2)
        iv = dp.patch_o_proj(2, source_dir, target=bridge(model_dir), alpha=alpha)
        assert_equal_to_surgery(model_dir, [iv], lambda m: surgery.set_o_proj(m, 2, w_tgt + alpha * (w_src - w_tgt)))

    def test_heads_subset(self, model_dir: Path, source_dir: Path) -> None:
        w_src = surgery.o_proj(surgery.hf_copy(source_dir), 0)
        w = surgery.o_proj(surgery.hf_copy(model_dir), 0)
        dh = dp.model_dims(bridge(model_dir)).d_head
        w[:, dh : 2 * dh] = w_src[:, dh : 2 * dh]
        iv = dp.patch_o_proj(0, source_dir, target=bridge(model_dir), heads=[1])
        assert iv.id == "o_proj:L0H1"
        assert_equal_to_surgery(model_dir, [iv], lambda m: surgery.set_o_proj(m, 0, w))

    def test_source_model_equals_source_directory(self, model_dir: Path, source_dir: Path) -> None:
        model = bridge(model_dir)
        ids = tokens(model)
        with dp.ablate(model, dp.patch_o_proj(1, source_dir, target=model)):
            from_dir = model(ids)
        with dp.ablate(model, dp.patch_o_proj(1, surgery.hf_copy(source_dir), target=model)):
            from_model = model(ids)
        assert torch.equal(from_dir, from_model)

    def test_sharded_checkpoint_reads_only_o_proj(self, tmp_path: Path, source_dir: Path) -> None:
        src = surgery.hf_copy(source_dir)
        src.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
        weights = load_o_proj_weights(tmp_path, [0, 2])
        assert sorted(weights) == [0, 2]
        for layer in (0, 2):
            assert torch.equal(weights[layer], surgery.o_proj(src, layer))

    def test_weights_of_the_target_are_not_modified(self, model_dir: Path, source_dir: Path) -> None:
        model = bridge(model_dir)
        before = model.blocks[1].attn.o.original_component.weight.clone()
        with dp.ablate(model, dp.patch_o_proj(1, source_dir, target=model)):
            model(tokens(model))
        assert torch.equal(model.blocks[1].attn.o.original_component.weight, before)


class TestOProjSchedules:
    def test_per_layer_accumulative_reverse(self, model_dir: Path, source_dir: Path) -> None:
        model = bridge(model_dir)
        n = dp.model_dims(model).n_layers
        per_layer = o_proj_per_layer(model, source_dir)
        accumulative = o_proj_accumulative(model, source_dir)
        reverse = o_proj_reverse(model, source_dir)
        assert [[iv.layer for iv in c] for c in per_layer] == [[k] for k in range(n)]
        assert [[iv.layer for iv in c] for c in accumulative] == [list(range(k + 1)) for k in range(n)]
        assert [[iv.layer for iv in c] for c in reverse] == [list(range(k, n)) for k in reversed(range(n))]

    def test_accumulative_equals_swapping_layers_0_to_k(self, model_dir: Path, source_dir: Path) -> None:
        src = surgery.hf_copy(source_dir)
        condition = o_proj_accumulative(bridge(model_dir), source_dir)[1]

        def edit(m):
            for layer in (0, 1):
                surgery.set_o_proj(m, layer, surgery.o_proj(src, layer))
            return m

        assert_equal_to_surgery(model_dir, condition, edit)


class TestComposition:
    def test_skip_and_head_in_other_layers(self, model_dir: Path) -> None:
        assert_equal_to_surgery(
            model_dir,
            [dp.skip_layer(2), dp.zero_head(0, 1)],
            lambda m: surgery.delete_layers(surgery.zero_o_proj_heads(m, 0, [1]), [2]),
        )

    @pytest.mark.parametrize("order", ["head_first", "patch_first"])
    def test_head_ablation_inside_a_patched_layer(self, model_dir: Path, source_dir: Path, order: str) -> None:
        model = bridge(model_dir)
        w_src = surgery.o_proj(surgery.hf_copy(source_dir), 1)
        patch, head = dp.patch_o_proj(1, source_dir, target=model), dp.zero_head(1, 2)
        ivs = [head, patch] if order == "head_first" else [patch, head]
        assert_equal_to_surgery(
            model_dir, ivs, lambda m: surgery.zero_o_proj_heads(surgery.set_o_proj(m, 1, w_src), 1, [2])
        )

    def test_hooks_are_plain_pairs_for_run_with_hooks(self, model_dir: Path) -> None:
        model = bridge(model_dir)
        ids = tokens(model)
        ivs = [dp.skip_layer(0), dp.zero_head(1, 0)]
        with dp.ablate(model, *ivs):
            via_context = model(ids)
        via_run = model.run_with_hooks(ids, fwd_hooks=collect_hooks(ivs))
        assert torch.equal(via_context, via_run)


class TestRemoval:
    def test_removal_restores_the_exact_baseline(self, model_dir: Path) -> None:
        model = bridge(model_dir)
        ids = tokens(model)
        baseline = model(ids)
        with dp.ablate(model, dp.skip_layer(1), dp.zero_kv_group(0, 0)):
            assert max_diff(model(ids), baseline) > 1e-4
        assert torch.equal(model(ids), baseline)

    def test_removed_even_after_an_error(self, model_dir: Path) -> None:
        model = bridge(model_dir)
        ids = tokens(model)
        baseline = model(ids)
        with pytest.raises(RuntimeError, match="boom"):
            with dp.ablate(model, dp.skip_layer(0)):
                raise RuntimeError("boom")
        assert torch.equal(model(ids), baseline)


class TestCachedGeneration:
    """KV-cached greedy generation through the bridge equals Hugging Face ``generate`` token for token."""

    N = 24

    def test_unablated(self, model_dir: Path) -> None:
        model = bridge(model_dir)
        ids = prompt_ids(model)
        ref = surgery.hf_copy(model_dir)
        expected = greedy_hf(ref, ids, self.N)
        assert_same_tokens(greedy_bridge(model, ids, self.N), expected, ref, ids.shape[1])

    def test_real_model_continues_the_story(self, stories_dir: Path) -> None:
        model = bridge(stories_dir)
        out = greedy_bridge(model, prompt_ids(model), 20)
        assert "there was a little girl named Lily" in model.tokenizer.decode(out[0])

    @pytest.mark.parametrize("case", ["skip", "head", "group", "head_weights", "o_proj"])
    def test_under_intervention(self, model_dir: Path, source_dir: Path, case: str) -> None:
        model = bridge(model_dir)
        r = dp.model_dims(model).group_size
        ivs, edit = {
            "skip": ([dp.skip_layer(1)], lambda m: surgery.delete_layers(m, [1])),
            "head": ([dp.zero_head(0, 1)], lambda m: surgery.zero_o_proj_heads(m, 0, [1])),
            "group": ([dp.zero_kv_group(1, 0)], lambda m: surgery.zero_o_proj_heads(m, 1, range(r))),
            "head_weights": ([dp.zero_head_weights(2, 1, group_size=r)], lambda m: surgery.zero_head_weights(m, 2, 1)),
            "o_proj": (
                [dp.patch_o_proj(0, source_dir, target=model)],
                lambda m: surgery.set_o_proj(m, 0, surgery.o_proj(surgery.hf_copy(source_dir), 0)),
            ),
        }[case]
        ids = prompt_ids(model)
        ref = edit(surgery.hf_copy(model_dir))
        expected = greedy_hf(ref, ids, self.N)
        assert_same_tokens(greedy_bridge(model, ids, self.N, ivs), expected, ref, ids.shape[1])


class TestBadInput:
    @pytest.fixture()
    def model(self, tiny_llama_dir: Path):
        return bridge(tiny_llama_dir)

    @pytest.mark.parametrize(
        "iv,message",
        [
            (lambda: dp.skip_layer(3), r"layer 3 out of range; the model has layers 0\.\.2"),
            (lambda: dp.zero_head(0, 4), r"head 4 out of range; the model has heads 0\.\.3"),
            (lambda: dp.zero_kv_group(0, 2), r"KV group 2 out of range; the model has groups 0\.\.1"),
            (lambda: dp.zero_head_weights(5, 0, group_size=2), r"layer 5 out of range"),
        ],
    )
    def test_out_of_range(self, model, iv, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            with dp.ablate(model, iv()):
                pass

    @pytest.mark.parametrize(
        "make",
        [
            lambda: dp.skip_layer(-1),
            lambda: dp.zero_head(0, -2),
            lambda: dp.zero_kv_group(0, -1),
            lambda: dp.skip_mlp(True),
        ],
    )
    def test_negative_or_non_int(self, make) -> None:
        with pytest.raises(ValueError, match="must be a non-negative int"):
            make()

    def test_float_index(self) -> None:
        """A float index is refused: by typeguard under pytest (TypeError), by the constructor otherwise."""
        with pytest.raises((TypeError, ValueError), match="layer|int"):
            dp.zero_kv_group(1.5, 0)

    @pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf])
    def test_alpha_not_finite(self, model, tiny_llama_dir: Path, alpha: float) -> None:
        with pytest.raises(ValueError, match="alpha must be a finite number"):
            dp.patch_o_proj(0, tiny_llama_dir, target=model, alpha=alpha)

    def test_patch_layer_and_heads_out_of_range(self, model, tiny_llama_dir: Path) -> None:
        with pytest.raises(ValueError, match=r"layer 3 out of range; the target model has layers 0\.\.2"):
            dp.patch_o_proj(3, tiny_llama_dir, target=model)
        with pytest.raises(ValueError, match=r"head 9 out of range; layer 0 has heads 0\.\.3"):
            dp.patch_o_proj(0, tiny_llama_dir, target=model, heads=[9])

    def test_source_shape_differs(self, model, tmp_path: Path) -> None:
        other = make_tiny_model(tmp_path, arch="llama", d_model=32, n_heads=4, n_kv_heads=2)
        with pytest.raises(ValueError, match=r"source shape \(32, 32\) differs from target shape \(64, 64\)"):
            dp.patch_o_proj(0, other, target=model)

    def test_source_architecture_differs(self, model, tiny_qwen3_dir: Path) -> None:
        with pytest.raises(ValueError, match="source is a qwen3 model but the target is llama"):
            dp.patch_o_proj(0, tiny_qwen3_dir, target=model)

    def test_source_not_a_checkpoint(self, model, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="holds no model.safetensors"):
            dp.patch_o_proj(0, tmp_path, target=model)
        save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
        with pytest.raises(ValueError, match="has no tensor model.layers.0.self_attn.o_proj.weight"):
            dp.patch_o_proj(0, tmp_path, target=model)

    def test_group_size_invalid(self) -> None:
        with pytest.raises(ValueError, match="group_size must be a positive int"):
            dp.zero_head_weights(0, 0, group_size=0)

    def test_not_an_intervention(self, model) -> None:
        with pytest.raises(TypeError, match="expected an Intervention"):
            validate(model, "skip:L0")


class TestIds:
    def test_stable_string_ids(self) -> None:
        assert [
            str(iv)
            for iv in (
                dp.skip_layer(12),
                dp.zero_head(35, 7),
                dp.zero_kv_group(35, 1),
                dp.skip_attn(3),
                dp.skip_mlp(3),
                dp.zero_head_weights(35, 7, group_size=4),
            )
        ] == ["skip:L12", "head:L35H7", "group:L35G1", "skip_attn:L3", "skip_mlp:L3", "head_weights:L35H7"]
        assert dp.skip_layer(4) == dp.skip_layer(4)


class TestShapeChecking:
    def test_typeguard_checks_hook_shapes(self) -> None:
        """Hook functions are shape-checked under pytest: a tensor of the wrong rank is refused."""
        from jaxtyping import TypeCheckError

        from depthprobe.interventions import zero_heads

        with pytest.raises(TypeCheckError):
            zero_heads(torch.zeros(2, 3, 4), None, heads=(0,))


class TestOProjSourceByName:
    def test_uncached_hub_source_offline_is_a_clear_error(
        self, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(
            ValueError, match="o_proj source: model 'depthprobe-tests/no-such-model' is not in the local"
        ):
            dp.patch_o_proj(0, "depthprobe-tests/no-such-model", target=bridge(tiny_llama_dir))
