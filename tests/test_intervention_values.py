"""Interventions as values: serialisation, rebuilding from ids, binding at use time, declared capabilities,
and mean ablation against an independent Hugging Face reference.

Every capability a type declares is checked against what its hooks really do on a tiny random
Llama; ``mean_head`` is proven equal (<= 1e-5, float32) to a forward pre-hook on the Hugging Face
o_proj that writes the same mean into the head's input slice, on Llama, Qwen3 and stories260K.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import depthprobe as dp
from depthprobe import adapter
from depthprobe.engine.logits import _chunks
from depthprobe.interventions import (
    INTERVENTION_TYPES,
    Intervention,
    MeanReference,
    OProjSource,
    collect_hooks,
    mean_head,
)
from depthprobe.sweep import condition_from_id, condition_id, condition_logits, parse_grid
from depthprobe.tasks import get_task
from depthprobe.tiny import make_tiny_model

from . import surgery
from .bridges import bridge

ATOL = 1e-5
TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "Question: What is the capital of France? Answer: Paris.",
    "The quick brown fox jumps over the lazy dog.",
]


def tokens(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.cfg.d_vocab, (2, 12), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    return ids


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    src = surgery.hf_copy(tiny_llama_dir)
    g = torch.Generator().manual_seed(11)
    for layer in surgery.layers(src):
        w = layer.self_attn.o_proj.weight
        w.data = torch.randn(w.shape, generator=g) * w.std()
    out = tmp_path_factory.mktemp("o_proj_source_values")
    src.save_pretrained(out)
    return out


def every_kind(source_dir: Path) -> list[Intervention]:
    """One value of every registered kind (o_proj with each source type, mean_head with each reference type)."""
    weight = surgery.o_proj(surgery.hf_copy(source_dir), 2)
    ivs = [
        dp.skip_layer(1),
        dp.skip_attn(2),
        dp.skip_mlp(0),
        dp.zero_head(1, 3),
        dp.zero_kv_group(2, 1),
        dp.zero_head_weights(0, 2),
        dp.patch_o_proj(1, source_dir),
        dp.patch_o_proj(2, weight, alpha=0.5, heads=[1, 3]),
        dp.patch_o_proj(0, "depthprobe-tests/some-hub-model", alpha=-1.0),
        mean_head(1, 2, TEXTS),
        mean_head(2, 0, "organism_knowledge:3"),
        mean_head(0, 1, MeanReference.for_task("kv_retrieval", limit=2, n_pairs=3, seed=1)),
    ]
    assert {iv.kind for iv in ivs} == set(INTERVENTION_TYPES.names()), "a kind is missing from this test"
    return ivs


def local(iv: Intervention) -> bool:
    """Values that bind without task data or the hub (the texts mean_head and local o_proj stand for their types)."""
    if iv.kind == "mean_head":
        return iv.reference.texts is not None
    return iv.kind != "o_proj" or iv.source.type != "hub"


class TestSerialisation:
    def test_pickle_round_trip_every_kind(self, source_dir: Path) -> None:
        for iv in every_kind(source_dir):
            back = pickle.loads(pickle.dumps(iv))
            assert back == iv and hash(back) == hash(iv) and back.id == iv.id

    def test_to_dict_json_round_trip_every_kind(self, source_dir: Path) -> None:
        for iv in every_kind(source_dir):
            data = json.loads(json.dumps(iv.to_dict()))
            back = Intervention.from_dict(data)
            assert back == iv and type(back) is type(iv) and back.id == iv.id
            assert back.to_dict() == iv.to_dict()

    def test_tensor_source_travels_with_its_data(self, source_dir: Path) -> None:
        weight = surgery.o_proj(surgery.hf_copy(source_dir), 2)
        iv = dp.patch_o_proj(2, weight)
        back = Intervention.from_dict(json.loads(json.dumps(iv.to_dict())))
        assert torch.equal(back.source.tensor, weight)
        data = iv.to_dict()
        data["source"]["ref"] = "sha256:" + "0" * 64
        with pytest.raises(ValueError, match="digest"):
            Intervention.from_dict(data)

    def test_values_compare_by_content(self, source_dir: Path) -> None:
        weight = surgery.o_proj(surgery.hf_copy(source_dir), 2)
        assert dp.patch_o_proj(2, weight) == dp.patch_o_proj(2, weight.clone())
        assert dp.patch_o_proj(2, weight) != dp.patch_o_proj(2, weight + 1)
        assert dp.patch_o_proj(1, source_dir) == dp.patch_o_proj(1, str(source_dir))
        assert mean_head(1, 2, TEXTS) == mean_head(1, 2, list(TEXTS)) != mean_head(1, 2, TEXTS[:2])
        assert len({dp.zero_head(1, 2), dp.zero_head(1, 2), dp.zero_kv_group(1, 2)}) == 2

    def test_bad_dicts(self) -> None:
        with pytest.raises(ValueError, match="unknown intervention kind 'neuron'; valid: group, head"):
            Intervention.from_dict({"kind": "neuron", "layer": 0})
        with pytest.raises(ValueError, match="unknown field"):
            Intervention.from_dict({"kind": "head", "layer": 0, "head": 1, "alpha": 2})
        with pytest.raises(ValueError, match="head must be a non-negative int"):
            Intervention.from_dict({"kind": "head", "layer": 0, "head": -1})


class TestFromId:
    IDS = [
        "skip:L12",
        "skip_attn:L3",
        "skip_mlp:L0",
        "head:L35H7",
        "group:L35G1",
        "head_weights:L35H7",
        "mean_head:L3H5@organism_knowledge:50",
        "mean_head:L1H0@kv_retrieval:4[n_pairs=4,seed=3]",
        "mean_head:L2H1@gsm8k_cot:10/4shot",
    ]

    @pytest.mark.parametrize("iv_id", IDS)
    def test_every_id_without_external_data(self, iv_id: str) -> None:
        iv = Intervention.from_id(iv_id)
        assert iv.id == iv_id
        assert Intervention.from_id(iv.id) == iv

    def test_equals_the_constructors(self) -> None:
        assert Intervention.from_id("head:L35H7") == dp.zero_head(35, 7)
        assert Intervention.from_id("head_weights:L35H7") == dp.zero_head_weights(35, 7, group_size=4)
        assert Intervention.from_id("mean_head:L1H0@kv_retrieval:4[n_pairs=4,seed=3]") == mean_head(
            1, 0, MeanReference.for_task("kv_retrieval", limit=4, n_pairs=4, seed=3)
        )
        assert condition_from_id("head:L1H2+skip:L0") == [dp.zero_head(1, 2), dp.skip_layer(0)]
        assert condition_from_id("baseline") == []

    @pytest.mark.parametrize(
        "iv_id,message",
        [
            ("o_proj:L1", "names no source"),
            ("mean_head:L1H2@texts:0123456789ab", "only by digest"),
            ("neuron:L1", "unknown intervention kind 'neuron'; valid:"),
            ("head:L1", r"expected head:L<layer>H<head>"),
            ("skip:L1H2", r"expected skip:L<layer>"),
            ("skip", "expected <kind>:L<layer>"),
        ],
    )
    def test_refused_with_a_reason(self, iv_id: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            Intervention.from_id(iv_id)


class TestBindAtUseTime:
    def test_constructors_take_no_model(self, tiny_llama_dir: Path, source_dir: Path) -> None:
        """A patch built without the model equals one built with ``target=``, bit for bit."""
        model = bridge(tiny_llama_dir)
        ids = tokens(model)
        with dp.ablate(model, dp.patch_o_proj(1, source_dir)):
            free = model(ids)
        with dp.ablate(model, dp.patch_o_proj(1, source_dir, target=model)):
            bound_early = model(ids)
        assert torch.equal(free, bound_early)

    def test_head_weights_bind_to_the_group_size_of_the_model_they_run_on(self, tmp_path: Path) -> None:
        """A value made with another model's group size is correct on this one (4 query heads per KV head)."""
        path = make_tiny_model(tmp_path, arch="llama", n_heads=4, n_kv_heads=1)
        model = dp.load_model(path)
        assert dp.model_dims(model).group_size == 4
        iv = dp.zero_head_weights(1, 3, group_size=2)
        ids = tokens(model)
        expected = surgery.zero_head_weights(surgery.hf_copy(path), 1, 3)(ids).logits
        with torch.no_grad(), dp.ablate(model, iv):
            got = model(ids)
        assert (got - expected).abs().max().item() <= ATOL
        assert (expected - surgery.pristine(str(path))(ids).logits).abs().max().item() > 1e-3

    def test_a_patch_for_another_shape_is_refused_at_bind(self, tmp_path: Path, tiny_llama_dir: Path) -> None:
        small = dp.load_model(make_tiny_model(tmp_path, arch="llama", d_model=32, n_heads=4, n_kv_heads=2))
        iv = dp.patch_o_proj(0, tiny_llama_dir)  # a 64-wide source: fine as a value
        with pytest.raises(ValueError, match=r"source shape \(64, 64\) differs from target shape \(32, 32\)"):
            with dp.ablate(small, iv):
                pass

    def test_collect_hooks_binds_to_the_model(self, tiny_llama_dir: Path, source_dir: Path) -> None:
        model = bridge(tiny_llama_dir)
        ids = tokens(model)
        ivs = [dp.zero_head(1, 2), dp.patch_o_proj(1, source_dir)]
        with dp.ablate(model, *ivs):
            expected = model(ids)
        assert torch.equal(model.run_with_hooks(ids, fwd_hooks=collect_hooks(ivs, model=model)), expected)
        with pytest.raises(ValueError, match=r"o_proj:L1 needs the model it runs on"):
            collect_hooks(ivs)


# ---------------------------------------------------------------------------------------
# One test per declared capability: the declaration agrees with what the hooks do.


def capture(model, ids, ivs, names):
    """Activations ``names`` seen after the interventions' edits (hooks added later run later)."""
    seen = {}

    def grab(name):
        def hook(x, hook):  # keyed by the alias asked for (hook.name is the canonical name)
            seen[name] = x.detach().clone()

        return hook

    with torch.no_grad(), dp.ablate(model, *ivs), model.hooks(fwd_hooks=[(n, grab(n)) for n in names]):
        model(ids)
    return seen


class TestDeclaredCapabilities:
    def test_identity_block(self, tiny_llama_dir: Path, source_dir: Path) -> None:
        model = bridge(tiny_llama_dir)
        ids = tokens(model)
        for iv in every_kind(source_dir):
            if not local(iv):
                continue
            pre, post = f"blocks.{iv.layer}.hook_resid_pre", f"blocks.{iv.layer}.hook_resid_post"
            got = capture(model, ids, [iv], [pre, post])
            assert torch.equal(got[pre], got[post]) == type(iv).identity_block, iv.id

    def test_first_layer(self, tiny_llama_dir: Path, source_dir: Path) -> None:
        """Nothing before ``first_layer`` changes; that layer's output does."""
        model = bridge(tiny_llama_dir)
        ids = tokens(model)
        base = capture(model, ids, [], [f"blocks.{l}.hook_resid_post" for l in range(3)])
        for iv in every_kind(source_dir):
            if not local(iv):
                continue
            got = capture(model, ids, [iv], [f"blocks.{l}.hook_resid_post" for l in range(3)])
            for layer in range(iv.first_layer):
                assert torch.equal(got[f"blocks.{layer}.hook_resid_post"], base[f"blocks.{layer}.hook_resid_post"])
            name = f"blocks.{iv.first_layer}.hook_resid_post"
            assert (got[name] - base[name]).abs().max().item() > 1e-6, iv.id

    def test_touched_heads_and_groups(self, tiny_llama_dir: Path, source_dir: Path) -> None:
        """Exactly the declared heads change their contribution W_O[:, h] z_h to the attention output."""
        model = bridge(tiny_llama_dir)
        dims = dp.model_dims(model)
        ids = tokens(model)
        for iv in every_kind(source_dir):
            if not local(iv):
                continue
            z, out = f"blocks.{iv.layer}.attn.hook_z", f"blocks.{iv.layer}.hook_attn_out"
            base, got = capture(model, ids, [], [z, out]), capture(model, ids, [iv], [z, out])
            if iv.kind in ("skip", "skip_attn", "skip_mlp"):
                zeroed = bool((got[out] == 0).all())
                assert zeroed == (iv.touched_heads(dims) == tuple(range(dims.n_heads))), iv.id
                assert iv.touched_heads(dims) in ((), tuple(range(dims.n_heads))), iv.id
                continue
            w = adapter.o_proj_weight(model, iv.layer).detach()
            w_iv = iv.patched_weight(model, dims) if iv.kind == "o_proj" else w
            d = dims.d_head
            changed = tuple(
                h
                for h in range(dims.n_heads)
                if (got[z][:, :, h] @ w_iv[:, h * d : (h + 1) * d].T - base[z][:, :, h] @ w[:, h * d : (h + 1) * d].T)
                .abs()
                .max()
                .item()
                > 1e-7
            )
            assert changed == iv.touched_heads(dims), iv.id
            assert iv.touched_groups(dims) == tuple(sorted({h // dims.group_size for h in changed}))

    def test_stateful(self, tiny_llama_dir: Path, source_dir: Path) -> None:
        """Stateful types share state between their hooks (an observer feeds an edit); the engine never
        puts two copies of one in a batched forward."""
        model = bridge(tiny_llama_dir)
        for iv in every_kind(source_dir):
            if not local(iv):
                continue
            assert bool(iv.bind(model).observers) == type(iv).stateful, iv.id
        patch = dp.patch_o_proj(1, source_dir)
        conditions = [[patch], [patch, dp.zero_head(2, 0)], [dp.zero_head(1, 0)], [dp.zero_head(1, 1)]]
        chunks = _chunks(conditions, [0, 1, 2, 3], size=4)
        assert all(sum(patch in conditions[i] for i in chunk) <= 1 for chunk in chunks)
        assert chunks == [[0, 2, 3], [1]]

    def test_binds_to_model(self, source_dir: Path) -> None:
        for iv in every_kind(source_dir):
            if type(iv).binds_to_model:
                with pytest.raises(ValueError, match="needs the model it runs on"):
                    iv.hooks
            else:
                assert iv.hooks and all(isinstance(name, str) and callable(fn) for name, fn in iv.hooks)

    def test_unit_and_grid(self, tiny_llama_dir: Path) -> None:
        model = bridge(tiny_llama_dir)
        dims = dp.model_dims(model)
        for cls in INTERVENTION_TYPES:
            if cls.grid is None:
                assert cls.unit is None
                continue
            grid = parse_grid(model, f"{cls.grid}:1", reference=TEXTS)
            n = dims.n_heads if cls.unit == "head" else dims.n_kv_heads
            assert [(c[0].kind, c[0].layer, c[0].index) for c in grid] == [(cls.kind, 1, i) for i in range(n)]

    def test_weight_edit(self, tiny_llama_dir: Path) -> None:
        """Every type names its equal weight edit; mean_head's (zero columns, add W_O[:, h] m as o_proj bias)
        is proven here, the others in test_interventions against the same surgery."""
        assert all(isinstance(cls.weight_edit, str) and cls.weight_edit for cls in INTERVENTION_TYPES)
        model = bridge(tiny_llama_dir)
        iv = mean_head(2, 1, TEXTS)
        ids = tokens(model)
        m = iv.means(model)[1]
        ref = surgery.zero_o_proj_heads(surgery.hf_copy(tiny_llama_dir), 2, [1])
        o_proj = surgery.layers(ref)[2].self_attn.o_proj
        w = surgery.o_proj(surgery.pristine(str(tiny_llama_dir)), 2)
        d = dp.model_dims(model).d_head
        o_proj.bias = torch.nn.Parameter(w[:, d : 2 * d] @ m)
        with torch.no_grad(), dp.ablate(model, iv):
            got = model(ids)
        assert (got - ref(ids).logits).abs().max().item() <= ATOL


# ---------------------------------------------------------------------------------------
# Mean ablation against the Hugging Face pre-hook reference.


def hf_head_mean(hf, layer: int, head: int, tokenizer, texts) -> torch.Tensor:
    """The head's o_proj input slice averaged over every position of every text (one unpadded forward each)."""
    attn = surgery.layers(hf)[layer].self_attn
    d = surgery.d_head(hf)
    rows = []
    handle = attn.o_proj.register_forward_pre_hook(
        lambda mod, args: rows.append(args[0][0, :, head * d : (head + 1) * d])
    )
    try:
        with torch.no_grad():
            for text in texts:
                hf(torch.tensor([tokenizer(text)["input_ids"]]))
    finally:
        handle.remove()
    return torch.cat(rows).double().mean(0).float()


def with_mean_prehook(hf, layer: int, head: int, mean: torch.Tensor):
    """Write ``mean`` into the head's slice of the o_proj input at every position (the reference edit)."""
    d = surgery.d_head(hf)

    def pre(mod, args):
        x = args[0].clone()
        x[..., head * d : (head + 1) * d] = mean
        return (x,)

    surgery.layers(hf)[layer].self_attn.o_proj.register_forward_pre_hook(pre)
    return hf


class TestMeanHead:
    @pytest.mark.parametrize("layer,head", [(0, 1), (2, 3)])
    def test_equals_hf_prehook_reference(self, model_dir: Path, layer: int, head: int) -> None:
        model = bridge(model_dir)
        ids = tokens(model)
        hf = surgery.hf_copy(model_dir)
        mean = hf_head_mean(hf, layer, head, model.tokenizer, TEXTS)
        ref = with_mean_prehook(hf, layer, head, mean)
        with torch.no_grad():
            expected = ref(ids).logits
            unedited = surgery.pristine(str(model_dir))(ids).logits
            zeroed = surgery.zero_o_proj_heads(surgery.hf_copy(model_dir), layer, [head])(ids).logits
            with dp.ablate(model, mean_head(layer, head, TEXTS)):
                got = model(ids)
        assert (got - expected).abs().max().item() <= ATOL
        assert (expected - unedited).abs().max().item() > 1e-4, "mean ablation must change the logits"
        assert (expected - zeroed).abs().max().item() > 1e-4, "mean ablation must differ from zero ablation"

    def test_task_reference_equals_its_texts(self, tiny_qwen3_dir: Path) -> None:
        model = bridge(tiny_qwen3_dir)
        ids = tokens(model)
        prompts = [i.prompt for i in get_task("organism_knowledge").instances(limit=3)]
        with torch.no_grad():
            with dp.ablate(model, mean_head(1, 2, "organism_knowledge:3")):
                by_task = model(ids)
            with dp.ablate(model, mean_head(1, 2, prompts)):
                by_texts = model(ids)
        assert torch.equal(by_task, by_texts)

    def test_in_cached_generation(self, tiny_llama_dir: Path) -> None:
        from depthprobe.evaluation.generation import greedy_generate

        model = bridge(tiny_llama_dir)
        ids = model.tokenizer("Once upon a time", return_tensors="pt").input_ids
        hf = surgery.hf_copy(tiny_llama_dir)
        ref = with_mean_prehook(hf, 1, 2, hf_head_mean(hf, 1, 2, model.tokenizer, TEXTS))
        ref.generation_config.eos_token_id = None
        expected = ref.generate(ids, max_new_tokens=16, do_sample=False, use_cache=True, pad_token_id=0)[
            :, ids.shape[1] :
        ]
        with dp.ablate(model, mean_head(1, 2, TEXTS)):
            got = greedy_generate(model, ids, torch.ones_like(ids), max_new_tokens=16)
        assert torch.equal(got, expected)
        plain = greedy_generate(model, ids, torch.ones_like(ids), max_new_tokens=16)
        assert not torch.equal(plain, expected), "the ablation must change the generation, or this proves nothing"

    def test_engine_equals_naive(self, tiny_qwen3_dir: Path) -> None:
        model = bridge(tiny_qwen3_dir)
        ids = tokens(model, seed=4)
        conditions = (
            [[]] + parse_grid(model, "mean_heads:2", reference=TEXTS) + [[mean_head(0, 1, TEXTS), dp.zero_head(2, 0)]]
        )
        out = condition_logits(model, ids, None, conditions)
        for cond in conditions:
            with torch.no_grad(), dp.ablate(model, *cond):
                ref = model(ids)
            assert (out[condition_id(cond)] - ref).abs().max().item() <= ATOL

    def test_run_sweep_grid(self, tiny_qwen3_dir: Path, tmp_path: Path) -> None:
        """``mean_heads:L`` takes the sweep's own documents as the reference; engine = per-condition evaluate."""
        model = bridge(tiny_qwen3_dir)
        kw = dict(limit=4, batch_size=4, progress=False)
        fast = dp.run_sweep(model, "organism_openbook", "mean_heads:1", out_dir=tmp_path / "fast", chunk=3, **kw)
        naive = dp.run_sweep(model, "organism_openbook", "mean_heads:1", out_dir=tmp_path / "naive", engine=False, **kw)
        ref = MeanReference.for_task("organism_openbook", limit=4)
        assert list(fast["condition"]) == ["baseline"] + [mean_head(1, h, ref).id for h in range(4)]
        assert list(fast["kind"])[1:] == ["mean_head"] * 4 and list(fast["index"])[1:] == [0, 1, 2, 3]
        assert list(fast["acc"]) == list(naive["acc"])
        fs = dp.load_results(tmp_path / "fast", samples=True)
        ns = dp.load_results(tmp_path / "naive", samples=True)
        for a, b in zip(fs["loglikelihoods"], ns["loglikelihoods"]):
            assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-4
        base = fs[fs["condition"] == "baseline"]["loglikelihoods"].tolist()
        assert any(fs[fs["condition"] == c]["loglikelihoods"].tolist() != base for c in fast["condition"][1:])
        with dp.ablate(model, mean_head(1, 2, ref)):
            direct = dp.evaluate(model, "organism_openbook", limit=4, batch_size=4)
        assert direct.metrics["acc"] == pytest.approx(
            float(naive.loc[naive["condition"] == mean_head(1, 2, ref).id, "acc"].iloc[0])
        )

    def test_refuses_to_compute_its_mean_under_other_hooks(self, tiny_llama_dir: Path) -> None:
        model = bridge(tiny_llama_dir)
        iv = mean_head(1, 0, ["a fresh reference text never used elsewhere"])
        with dp.ablate(model, dp.skip_layer(0)):
            with pytest.raises(ValueError, match="unablated model"):
                iv.bind(model)

    def test_bad_references(self) -> None:
        with pytest.raises(ValueError, match="bad mean reference"):
            mean_head(0, 0, "organism knowledge!")
        with pytest.raises(ValueError, match="non-empty list"):
            mean_head(0, 0, [])
        with pytest.raises(ValueError, match="grid mean_heads:L needs a reference"):
            parse_grid(dp.models.ModelDims(2, 4, 2, 8, 32), "mean_heads:1")


def test_o_proj_source_kinds(tiny_llama_dir: Path) -> None:
    assert OProjSource.of(tiny_llama_dir, 0).type == "path"
    assert OProjSource.of("llama-3.1-8b", 0) == OProjSource("hub", "llama-3.1-8b")
    with pytest.raises(ValueError, match="is not a model or a checkpoint directory"):
        OProjSource.of("./no/such/dir", 0)
