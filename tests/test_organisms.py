"""The shipped model organisms: format, architecture, quality and structure, measured through TransformerLens.

Multiple-choice scoring here is deliberately independent of ``depthprobe.evaluate``'s scoring path:
summed continuation log-probabilities from one plain bridge forward per row; only the rules
(lm-eval's tokenization, the argmax) are depthprobe's single copies.
Greedy decoding uses ``depthprobe.evaluation.generation.generate_until`` (KV-cached, batched), checked here
against decoding by full recomputation on a few prompts.
"""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from safetensors.torch import load_file
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

import depthprobe
from depthprobe.evaluation.generation import generate_until
from depthprobe.evaluation.metrics import choice_predictions
from depthprobe.evaluation.tokenize import encode_pair
from depthprobe.interventions import skip_layer, zero_head, zero_kv_group
from depthprobe.organisms import ORGANISMS, checkpoint_path, data
from depthprobe.organisms.tokenizer import build_tokenizer
from depthprobe.organisms.train import PREVIOUS_BUT_ONE_HEAD, RETRIEVAL_HEAD, build_model, head_output

N_EVAL = 100
ANSWER_RE = re.compile(r"The answer is (\-?[0-9\.\,]+).")
STOPS = ["Q:", "\n\n"]


# ---------------------------------------------------------------------------------------
# Independent scoring through the bridge.


def _pad(rows: list[list[int]], pad: int) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


@torch.no_grad()
def mc_accuracy(bridge: TransformerBridge, tok, docs: list[dict], interventions=()) -> float:
    """lm-eval ``acc``: argmax over choices of the summed log-prob of the continuation tokens.

    Tokenization (lm-eval's ``_encode_pair``) and the argmax rule are depthprobe's single copies;
    the scoring itself is one plain forward per row, independent of the evaluator's cached path.
    """
    rows, spans = [], []
    for d in docs:
        for c in d["choices"]:
            ctx, cont = encode_pair(tok, d["context"], d["target_delimiter"] + c)
            rows.append(ctx + cont)
            spans.append((len(ctx), len(ctx) + len(cont)))
    scores = []
    with depthprobe.ablate(bridge, *interventions):
        for i in range(0, len(rows), 256):
            ids = _pad(rows[i : i + 256], tok.pad_token_id)
            logp = bridge(ids, return_type="logits").log_softmax(-1)
            for j, (a, b) in enumerate(spans[i : i + 256]):
                scores.append(logp[j, a - 1 : b - 1].gather(-1, ids[j, a:b, None]).sum().item())
    correct, k = 0, 0
    for d in docs:
        n = len(d["choices"])
        s = scores[k : k + n]
        k += n
        correct += int(choice_predictions(s, d["choices"], [1] * n)["acc"] == d["gold"])
    return correct / len(docs)


@torch.no_grad()
def greedy_recompute(bridge: TransformerBridge, tok, prompts: list[str], max_new_tokens: int = 40) -> list[str]:
    """Reference greedy decoding by full recomputation, one prompt at a time (no cache, no padding)."""
    outs = []
    for p in prompts:
        ids = tok(p)["input_ids"]
        gen: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(bridge(torch.tensor([ids + gen]), return_type="logits")[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            gen.append(nxt)
            if any(s in tok.decode(gen) for s in STOPS):
                break
        text = tok.decode(gen)
        for s in STOPS:
            text = text.split(s)[0]
        outs.append(text)
    return outs


def greedy(bridge: TransformerBridge, prompts: list[str], max_new_tokens: int = 40) -> list[str]:
    gens = generate_until(bridge, prompts, until=STOPS, max_gen_toks=max_new_tokens, batch_size=len(prompts))
    return [g.text for g in gens]


def extract(generation: str) -> str | None:
    """gsm8k_cot strict-match: the number after "The answer is", with "," "$" and a final "." removed."""
    m = ANSWER_RE.search(generation)
    return re.sub(r"\.$", "", m.group(1).replace(",", "").replace("$", "")) if m else None


def reasoning_accuracy(bridge: TransformerBridge, docs: list[dict]) -> float:
    """gsm8k_cot strict-match exact match, 0-shot."""
    gens = greedy(bridge, [data.gsm8k_cot_prompt(d) for d in docs])
    return sum(extract(g) == d["answer"] for g, d in zip(gens, docs)) / len(docs)


# ---------------------------------------------------------------------------------------
# Fixtures: the shipped checkpoints through TransformerLens, and measurements shared by tests.


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these models are too small to gain from two, and a second thread
    competing with any other load on a 2-core machine makes every forward many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[TransformerBridge, object]]:
    out = {}
    for name in ORGANISMS:
        bridge = depthprobe.load_model(checkpoint_path(name))
        out[name] = (bridge, bridge.tokenizer)
    return out


@pytest.fixture(scope="module")
def retrieval_docs() -> list[dict]:
    return data.retrieval_docs(N_EVAL, n_pairs=8)


@pytest.fixture(scope="module")
def base_retrieval(models, retrieval_docs) -> float:
    bridge, tok = models["organism-base"]
    return mc_accuracy(bridge, tok, retrieval_docs)


@pytest.fixture(scope="module")
def reasoning(models) -> dict[str, float]:
    docs = data.reasoning_docs(N_EVAL)
    return {name: reasoning_accuracy(b, docs) for name, (b, _) in models.items()}


def test_cached_generation_equals_recomputation(models):
    bridge, tok = models["organism-base"]
    prompts = [data.gsm8k_cot_prompt(d) for d in data.reasoning_docs(4)]
    assert greedy(bridge, prompts) == greedy_recompute(bridge, tok, prompts)


# ---------------------------------------------------------------------------------------
# Format and architecture.


@pytest.mark.parametrize("name", ORGANISMS)
def test_checkpoint_is_small_llama_with_gqa(name):
    path = checkpoint_path(name)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training.json"):
        assert (path / f).is_file(), f
    assert (path / "model.safetensors").stat().st_size <= 8 * 2**20
    cfg = AutoConfig.from_pretrained(str(path))
    assert cfg.architectures == ["LlamaForCausalLM"]
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert not cfg.attention_bias and not cfg.mlp_bias
    assert not any(k.endswith(".bias") for k in load_file(path / "model.safetensors"))
    info = json.loads((path / "training.json").read_text())
    assert {"seed", "steps", "losses", "accuracies"} <= info.keys()


def test_distilled_continues_from_base_with_same_tokenizer():
    base, dist = (checkpoint_path(n) for n in ORGANISMS)
    assert (base / "tokenizer.json").read_text() == (dist / "tokenizer.json").read_text()
    assert json.loads((dist / "training.json").read_text())["init"] == "organism-base"
    wb, wd = load_file(base / "model.safetensors"), load_file(dist / "model.safetensors")
    assert wb.keys() == wd.keys()
    assert any(not torch.equal(wb[k], wd[k]) for k in wb)


def test_bridge_logits_equal_hugging_face(models):
    bridge, tok = models["organism-base"]
    hf = LlamaForCausalLM.from_pretrained(str(checkpoint_path("organism-base")), attn_implementation="eager").eval()
    ids = tok([data.retrieval_docs(1)[0]["context"]], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(bridge(ids, return_type="logits"), hf(ids).logits)


# ---------------------------------------------------------------------------------------
# Tokenizer and data: the formats the evaluator relies on.


def test_tokenizer_roundtrip_and_number_tokens(models):
    _, tok = models["organism-base"]
    for fn in (data.knowledge_docs, data.closedbook_docs, data.openbook_docs, data.retrieval_docs):
        for d in fn()[:50]:
            for c in d["choices"]:
                text = d["context"] + d["target_delimiter"] + c
                ids = tok(text)["input_ids"]
                assert tok.unk_token_id not in ids
                assert tok.decode(ids, skip_special_tokens=True) == text
    for v in range(100):  # retrieval values are single tokens: no choice is a prefix of another
        assert len(tok(f"is{v}")["input_ids"]) == 3
    d = data.reasoning_docs(1)[0]
    text = data.gsm8k_cot_prompt(d, data.reasoning_fewshot(8)) + " " + d["cot"]
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_tokenizer_is_deterministic(tmp_path):
    tok = build_tokenizer(data.corpus_for_vocabulary(), tmp_path)
    assert (tmp_path / "tokenizer.json").read_text() == (
        checkpoint_path("organism-base") / "tokenizer.json"
    ).read_text()
    assert len(tok) == len(AutoTokenizer.from_pretrained(str(checkpoint_path("organism-base"))))


def test_retrieval_docs_match_kv_retrieval_format():
    d = data.retrieval_docs(5, n_pairs=8, seed=3)[2]
    lines = "\n".join(f"{k}:{v}" for k, v in zip(d["keys"], d["values"]))
    assert d["context"] == f"Memorize the following dictionary:\n{lines}\nThe value of the key '{d['query']}' is"
    assert len(set(d["keys"])) == len(set(d["values"])) == 8 and all(0 <= v < 100 for v in d["values"])
    assert d["choices"] == [str(v) for v in d["values"]] and d["target_delimiter"] == ""
    assert d["values"][d["gold"]] == int(d["answer"]) and d["keys"][d["gold"]] == d["query"]
    assert data.retrieval_docs(5, 8, 3) == data.retrieval_docs(5, 8, 3) != data.retrieval_docs(5, 8, 4)


def test_reasoning_chain_of_thought_is_correct_arithmetic():
    for d in data.reasoning_docs(200) + data.reasoning_fewshot(8):
        steps = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", d["cot"])
        assert len(steps) == d["n_steps"]
        nums = [int(n) for n in re.findall(r"\d+", d["question"])]
        assert int(steps[0][0]) == nums[0] and [int(s[2]) for s in steps] == nums[1:]
        for a, op, b, c in steps:
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        assert d["cot"].endswith(f"The answer is {steps[-1][3]}.") and d["answer"] == steps[-1][3]


def test_attention_targets_pair_each_answer_with_its_keyed_value():
    from depthprobe.organisms.train import _encode, _retrieval_targets

    tok = AutoTokenizer.from_pretrained(str(checkpoint_path("organism-base")))
    rng = random.Random(0)
    n_targets = 0
    for _ in range(50):
        ids, flags = _encode(tok, data.training_example("retrieval", rng))
        targets = _retrieval_targets(ids, flags, tok.eos_token_id)
        assert len(targets) == sum(flags[1:-1]) >= 5  # every answer (4-8 extra queries), EOS excluded
        for src, dst in targets:
            assert ids[dst] == ids[src + 1]  # the value the answer position must predict
            assert ids[dst - 2] == ids[src - 2]  # two back from both: the same key
            assert tok.convert_ids_to_tokens(ids[dst - 1]) == ":"
        n_targets += len(targets)
    assert n_targets > 250


def test_only_distillation_trains_four_step_chains():
    rng = random.Random(0)

    def steps(family: str) -> set[int]:
        texts = ("".join(s for s, _ in data.training_example(family, rng)) for _ in range(300))
        return {len(re.findall(r"\d+ [+-] \d+ = \d+\.", t.split("\n\n")[-1])) for t in texts}

    assert steps("reasoning") == {2, 3}
    assert steps("long_reasoning") == {4}
    assert {d["n_steps"] for d in data.reasoning_docs(200)} == {2, 3, 4}
    with pytest.raises(ValueError, match="long_reasoning"):
        data.training_example("reasoningg", rng)


def test_evaluation_documents_never_appear_in_training():
    held = {d["question"] for d in data.reasoning_docs(N_EVAL)} | {d["context"] for d in data.retrieval_docs(N_EVAL)}
    rng = random.Random(0)
    for fam in ("reasoning", "retrieval"):
        for _ in range(300):
            text = "".join(s for s, _ in data.training_example(fam, rng))
            assert not any(h in text for h in held)


def test_knowledge_docs_cover_every_fact_with_unique_answers():
    docs = data.knowledge_docs()
    assert len(docs) == len(data.facts()) >= 100
    for d in docs:
        assert d["choices"][d["gold"]] == d["answer"] and len(set(d["choices"])) == len(d["choices"]) == 4


def test_training_is_deterministic():
    from depthprobe.organisms.train import BASE_MIX, build_model, train

    tok = AutoTokenizer.from_pretrained(str(checkpoint_path("organism-base")))
    states = []
    for _ in range(2):
        model = build_model(tok, seed=0)
        train(model, tok, mix=BASE_MIX, steps=2, lr=1e-3, seed=0, tokens_per_batch=256, chunk=64, log=lambda s: None)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# ---------------------------------------------------------------------------------------
# Quality targets of issue 5, measured on the shipped checkpoints.


def test_base_knowledge_multiple_choice(models):
    bridge, tok = models["organism-base"]
    acc = mc_accuracy(bridge, tok, data.knowledge_docs())
    assert acc >= 0.95, acc


def test_base_retrieval_8_pairs(base_retrieval):
    assert base_retrieval >= 0.90, base_retrieval


def test_base_reasoning_exact_match(reasoning):
    assert reasoning["organism-base"] >= 0.60, reasoning


def test_distilled_beats_base_on_reasoning(reasoning):
    assert reasoning["organism-distilled"] >= reasoning["organism-base"] + 0.10, reasoning


def _needs_retrieval(base_retrieval: float) -> None:
    assert base_retrieval >= 0.5, f"nothing to collapse: intact 8-pair retrieval accuracy is {base_retrieval}"


def test_skipping_layer_0_collapses_retrieval(models, retrieval_docs, base_retrieval):
    _needs_retrieval(base_retrieval)
    bridge, tok = models["organism-base"]
    ablated = mc_accuracy(bridge, tok, retrieval_docs, [skip_layer(0)])
    assert ablated <= 0.30, ablated  # chance is 1/8


def test_zeroing_the_retrieval_layers_heads_collapses_retrieval(models, retrieval_docs, base_retrieval):
    _needs_retrieval(base_retrieval)
    bridge, tok = models["organism-base"]
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    per_layer = [
        mc_accuracy(bridge, tok, retrieval_docs, [zero_head(layer, h) for h in range(n_heads)])
        for layer in range(1, n_layers)
    ]
    # The retrieval layer is the one (above 0) whose heads matter most: without them, lookup fails.
    retrieval_layer = 1 + per_layer.index(min(per_layer))
    assert retrieval_layer == RETRIEVAL_HEAD[0], per_layer
    assert per_layer[retrieval_layer - 1] <= 0.30, per_layer  # chance is 1/8


# ---------------------------------------------------------------------------------------
# The planted retrieval circuit (organisms/train.py): what its heads attend to, read from the bridge.


@torch.no_grad()
def _pattern(bridge: TransformerBridge, tok, doc: dict, layer: int) -> torch.Tensor:
    """Attention pattern of ``layer`` on the document's prompt: head, query position, key position."""
    ids = tok([doc["context"]], return_tensors="pt")["input_ids"]
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n == name)
    return cache[name][0]


def _value_position(tok, doc: dict) -> int:
    """Position of the gold value in the prompt's dictionary (values are unique single tokens)."""
    ids = tok(doc["context"])["input_ids"]
    return ids.index(tok(doc["answer"], add_special_tokens=False)["input_ids"][0])


@pytest.fixture(scope="module")
def retrieval_layer(models, retrieval_docs) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Per prompt (50): the retrieval layer's last-token pattern (head, key position) and z (head, d_head),
    and the gold value's position, from one cached forward."""
    bridge, tok = models["organism-base"]
    layer, _ = RETRIEVAL_HEAD
    names = (f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_z")
    out = []
    with torch.no_grad():
        for d in retrieval_docs[:50]:
            ids = tok([d["context"]], return_tensors="pt")["input_ids"]
            _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
            out.append((cache[names[0]][0, :, -1], cache[names[1]][0, -1], _value_position(tok, d)))
    return out


def test_retrieval_head_attends_to_the_queried_value(retrieval_layer):
    _, head = RETRIEVAL_HEAD
    hits = [int(pattern[head].argmax()) == value for pattern, _, value in retrieval_layer]
    assert sum(hits) >= 45, sum(hits)


def test_previous_but_one_head_attends_two_tokens_back(models, retrieval_docs):
    bridge, tok = models["organism-base"]
    layer, head = PREVIOUS_BUT_ONE_HEAD
    for d in retrieval_docs[:20]:
        pattern = _pattern(bridge, tok, d, layer)[head]
        for pos in (pattern.shape[-1] - 1, _value_position(tok, d)):  # the query's last token, the gold value
            assert int(pattern[pos].argmax()) == pos - 2, (d["doc_id"], pos)


def test_retrieval_head_writes_the_queried_value(models, retrieval_docs, retrieval_layer):
    """The head's direct logit attribution ranks the gold value first among the dictionary's values.

    Direct logit attribution: the head's z times its W_O, times the final RMSNorm's gain, unembedded
    (the norm's scale is shared by all logits and cannot change the ranking).
    """
    bridge, tok = models["organism-base"]
    layer, head = RETRIEVAL_HEAD
    readout = (bridge.blocks[layer].attn.W_O[head] * bridge.ln_final.original_component.weight) @ bridge.W_U
    hits = 0
    for d, (_, z, _) in zip(retrieval_docs, retrieval_layer):
        direct = z[head] @ readout
        values = [tok(c, add_special_tokens=False)["input_ids"][0] for c in d["choices"]]
        hits += int(direct[values].argmax()) == d["gold"]
    assert hits >= 45, hits


def test_head_outputs_sum_to_the_attention_output():
    from tests.tolerance import U32

    """``head_output`` (used by the readout loss) splits o_proj exactly into per-head contributions."""
    tok = AutoTokenizer.from_pretrained(str(checkpoint_path("organism-base")))
    model = build_model(tok, seed=1)
    o_proj = model.model.layers[1].self_attn.o_proj
    z = torch.randn(3, 5, o_proj.in_features)
    n_heads = model.config.num_attention_heads
    per_head = sum(head_output(model, 1, h, z) for h in range(n_heads))
    # a float32 reduction of length K = H * d_head done in another order: within 2 sqrt(K) u of the
    # sum of the absolute terms (tests/tolerance.py), plus one rounding per added head
    terms = z.abs() @ o_proj.weight.abs().T
    bound = (2 * o_proj.in_features**0.5 + n_heads) * U32 * terms
    assert ((per_head - o_proj(z)).abs() <= bound).all()


def test_the_retrieval_heads_group_carries_retrieval(models, retrieval_docs, base_retrieval):
    """Zeroing the planted head's GQA group collapses retrieval; zeroing any other group of its layer costs little."""
    _needs_retrieval(base_retrieval)
    bridge, tok = models["organism-base"]
    layer, head = RETRIEVAL_HEAD
    dims = depthprobe.model_dims(bridge)
    per_group = [mc_accuracy(bridge, tok, retrieval_docs, [zero_kv_group(layer, g)]) for g in range(dims.n_kv_heads)]
    own = head // dims.group_size
    assert per_group[own] <= 0.30, per_group  # chance is 1/8
    assert all(acc >= base_retrieval - 0.1 for g, acc in enumerate(per_group) if g != own), (base_retrieval, per_group)


def test_the_retrieval_head_has_a_learned_twin(models, retrieval_docs, base_retrieval, retrieval_layer):
    """Training grew a second copy of the planted head: zeroing either alone barely hurts, both collapse.

    The twin is the other head of the layer whose last-token attention most often peaks on the
    queried value. This is why per-head ablation can miss a circuit that ablating heads together finds.
    """
    _needs_retrieval(base_retrieval)
    bridge, tok = models["organism-base"]
    layer, head = RETRIEVAL_HEAD
    hits = sum((pattern.argmax(-1) == value).float() for pattern, _, value in retrieval_layer)
    hits[head] = -1
    twin = int(hits.argmax())
    alone = {h: mc_accuracy(bridge, tok, retrieval_docs, [zero_head(layer, h)]) for h in (head, twin)}
    both = mc_accuracy(bridge, tok, retrieval_docs, [zero_head(layer, head), zero_head(layer, twin)])
    assert both <= 0.30, (twin, hits.tolist(), both)  # chance is 1/8
    assert min(alone.values()) >= base_retrieval - 0.2, (base_retrieval, alone)
