"""Log-likelihood scoring: lm-eval's tokenization, and batched/cached scores equal a naive forward per request."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from depthprobe.evaluation.loglikelihood import encode_pair, model_max_length, score_choices
from depthprobe.evaluator import evaluate
from depthprobe.models import load_model

from .tolerance import ForwardShape, logit_scale, loglikelihood_bound

REQUESTS = [
    ("Question: What is the capital of France?\nAnswer:", [" Paris", " London is big", " A", " 42 and 43"]),
    ("Once upon a time, there was a little girl named Lily. She loved to ", ["play", "run outside in the park", "x"]),
    ("A. B. C. D. Answer:", [" A", " B", " C", " D"]),
    ("The quick brown fox", [" jumps over the lazy dog.", " sat", " 1 2 3 4 5 6 7 8 9 10 11"]),
    ("Memorize the following dictionary:\napple:12\nriver:7\nThe value of the key 'river' is", ["12", "7"]),
]


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_qwen3", "stories260K"])
def models(request):
    path = request.getfixturevalue(
        {"tiny_llama": "tiny_llama_dir", "tiny_qwen3": "tiny_qwen3_dir", "stories260K": "stories_dir"}[request.param]
    )
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(path)
    return load_model(path, dtype="float32", device="cpu"), hf, tok


def naive_scores(forward, tok, context, continuation, max_length, with_bound_of=None):
    """One full forward of lm-eval's input window per request: summed log-prob and greedy flag.

    With ``with_bound_of`` (a model), also the float32 bound on |Δ ll| for this request
    (``tests/tolerance.py``: its token count and the magnitude of the logits it reads).
    """
    ctx, cont = encode_pair(tok, context, continuation)
    window = (ctx + cont)[-(max_length + 1) :][:-1]
    with torch.no_grad():
        logits = forward(torch.tensor([window]))
        logprobs = torch.log_softmax(logits, dim=-1)[0]
    rows = logprobs[len(window) - len(cont) :]
    target = torch.tensor(cont)
    ll, greedy = rows.gather(1, target[:, None]).sum().item(), bool((rows.argmax(-1) == target).all())
    if with_bound_of is None:
        return ll, greedy
    scale = logit_scale(logits[0, len(window) - len(cont) :])
    return ll, greedy, loglikelihood_bound(ForwardShape.of(with_bound_of), scale, len(cont), ll)


def test_encode_pair_matches_lm_eval(tiny_llama_dir, stories_dir):
    from lm_eval.models.huggingface import HFLM

    for path in (tiny_llama_dir, stories_dir):
        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path)
        lm = HFLM(pretrained=hf, tokenizer=tok, batch_size=1)
        pairs = [(c, x) for c, conts in REQUESTS for x in conts] + [
            ("Answer: ", "B"),
            ("x  \n", " y"),
            ("<s>Hi", " there"),
        ]
        for context, continuation in pairs:
            assert encode_pair(tok, context, continuation) == tuple(map(list, lm._encode_pair(context, continuation)))
        assert model_max_length(hf, tok) == lm.max_length


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_scores_equal_naive_forward(models, batch_size):
    bridge, hf, tok = models
    max_len = model_max_length(hf, tok)
    results, stats = score_choices(bridge, REQUESTS, batch_size=batch_size)
    assert stats.n_truncated == 0 and stats.n_requests == sum(len(c) for _, c in REQUESTS)
    for (context, conts), res in zip(REQUESTS, results):
        for cont, ll, greedy in zip(conts, res.loglikelihoods, res.is_greedy):
            ref_ll, ref_greedy, tol = naive_scores(lambda t: hf(t).logits, tok, context, cont, max_len, hf)
            assert abs(ll - ref_ll) <= tol, (context, cont, ll, ref_ll, tol)
            assert greedy == ref_greedy


def test_single_token_choices_cost_one_forward_per_context_batch(models):
    """MMLU-style letters: one forward scores all choices of a batch of contexts; multi-token ones need a second."""
    bridge, _, tok = models
    reqs = [(f"Question {i}: pick one.\nAnswer:", [" A", " B", " C", " D"]) for i in range(5)]
    single = all(len(encode_pair(tok, c, x)[1]) == 1 for c, xs in reqs for x in xs)
    _, stats = score_choices(bridge, reqs, batch_size=16)
    assert stats.n_forwards == (1 if single else 2)
    _, stats = score_choices(bridge, [(c, [x + " and more words" for x in xs]) for c, xs in reqs], batch_size=16)
    assert stats.n_forwards == 3  # contexts once, then 20 choice rows in two batches of <= 16


def test_left_truncation_matches_lm_eval_window_and_is_counted(models):
    bridge, hf, tok = models
    max_len = 2 + max(len(encode_pair(tok, c, x)[1]) for c, xs in REQUESTS for x in xs)
    results, stats = score_choices(bridge, REQUESTS, batch_size=4, max_length=max_len)
    n_long = 0
    for (context, conts), res in zip(REQUESTS, results):
        for cont, ll, greedy in zip(conts, res.loglikelihoods, res.is_greedy):
            ctx, c = encode_pair(tok, context, cont)
            n_long += len(ctx) + len(c) > max_len + 1
            ref_ll, ref_greedy, tol = naive_scores(lambda t: hf(t).logits, tok, context, cont, max_len, hf)
            assert abs(ll - ref_ll) <= tol and greedy == ref_greedy
    assert stats.n_truncated == n_long > 0


def test_cached_scoring_under_hooks_equals_hooked_full_forward(models):
    """The context KV cache is built under the active hooks: cached scores equal hooked full forwards."""
    bridge, _, tok = models
    max_len = model_max_length(bridge, tok)

    def zero(t, hook):
        return torch.zeros_like(t)

    hooks = [("blocks.0.hook_attn_out", zero)]
    plain, _ = score_choices(bridge, REQUESTS, batch_size=8)
    with bridge.hooks(fwd_hooks=hooks):
        hooked, _ = score_choices(bridge, REQUESTS, batch_size=8)
        for (context, conts), res in zip(REQUESTS, hooked):
            for cont, ll in zip(conts, res.loglikelihoods):
                ref_ll, _, tol = naive_scores(lambda t: bridge(t), tok, context, cont, max_len, bridge)
                assert abs(ll - ref_ll) <= tol
    diff = max(abs(a - b) for p, h in zip(plain, hooked) for a, b in zip(p.loglikelihoods, h.loglikelihoods))
    assert diff > 1e-3, "the hook had no effect, so this test could not fail"


def test_kv_retrieval_scores_equal_naive(models):
    bridge, hf, tok = models
    result = evaluate(bridge, "kv_retrieval", n_pairs=6, n_examples=3, seed=1, batch_size=4)
    max_len = model_max_length(hf, tok)
    for row in result.samples.itertuples():
        for choice, ll in zip(row.choices, row.loglikelihoods):
            ref, _, tol = naive_scores(lambda t: hf(t).logits, tok, row.prompt, choice, max_len, hf)  # no leading space
            assert abs(ll - ref) <= tol
        assert row.prediction == max(range(len(row.choices)), key=lambda j: (row.loglikelihoods[j], -j))
    assert result.metrics["acc"] == pytest.approx(result.samples["correct"].mean())


def test_bad_requests_raise(models):
    bridge, _, _ = models
    with pytest.raises(ValueError, match="batch_size"):
        score_choices(bridge, REQUESTS, batch_size=0)
    with pytest.raises(ValueError, match="zero tokens"):
        score_choices(bridge, [("Hello", ["", " x"])])
