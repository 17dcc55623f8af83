"""Greedy generation through the bridge against Hugging Face ``generate`` and lm-eval's ``generate_until``."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from depthprobe.evaluation.chat import THINK_END, apply_chat_template, strip_thinking
from depthprobe.evaluation.generation import Generation, generate_until, greedy_generate, max_context_length
from depthprobe.models import load_model
from depthprobe.tiny import make_tiny_model
from tests.tolerance import ForwardShape, assert_same_greedy, hf_greedy

PROMPTS = [
    "Once upon a time, there was a little girl named Lily. She",
    "The quick brown fox",
    "Q: There are 15 trees in the grove. How many trees did the workers plant?\nA:",
    "Lily",
    "She loved to play outside in the park with her",
]

PREFIX = (
    "Q: There are 15 trees in the grove. After they are done, there will be 21 trees.\n"
    "A: So there must have been 21 - 15 = 6. The answer is 6.\n\n"
)
QUESTIONS = [
    "Q: What is the capital of France?\nA:",
    "Q: Once upon a time, there was a little girl. How old was she?\nA:",
    "Q: The quick brown fox jumps over the lazy dog. Science?\nA:",
    "Q: Memorize the following dictionary: apple:12 river:7\nA:",
    "Q: 1 2 3\nA:",
]


def _pair(path: Path, name: str) -> SimpleNamespace:
    bridge = load_model(path, dtype=torch.float32, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32)
    hf.eval().requires_grad_(False)
    return SimpleNamespace(name=name, path=path, bridge=bridge, hf=hf, tok=AutoTokenizer.from_pretrained(path))


@pytest.fixture(scope="module")
def pair(model_dir: Path) -> SimpleNamespace:
    """Bridge and a separate Hugging Face copy of each conftest model (llama, qwen3, stories260K)."""
    return _pair(model_dir, "stories260K" if model_dir.name == "stories260K" else model_dir.name)


@pytest.fixture(scope="module")
def short_ctx(tmp_path_factory) -> SimpleNamespace:
    """A tiny Llama with a 48-token context, so left truncation happens on ordinary prompts."""
    path = make_tiny_model(tmp_path_factory.mktemp("short"), arch="llama", max_position_embeddings=48, seed=1)
    return _pair(path, "short")


def _pad_id(tok) -> int:
    return next(i for i in (tok.pad_token_id, tok.unk_token_id, tok.eos_token_id) if i is not None)


def _left_padded(tok, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    rows = [tok(p)["input_ids"] for p in prompts]
    width, pad = max(map(len, rows)), _pad_id(tok)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    assert len({len(r) for r in rows}) > 2, "prompts must differ in length to exercise left padding"
    return ids, mask, pad


def _hf_generate(hf, ids, mask, pad, n, eos) -> torch.Tensor:
    return _hf_generate_with_logits(hf, ids, mask, pad, n, eos)[0]


def _hf_generate_with_logits(hf, ids, mask, pad, n, eos) -> tuple[torch.Tensor, torch.Tensor]:
    """The new tokens and the logits each step chose from (to check no step is a float32 near-tie)."""
    return hf_greedy(hf, ids, n, attention_mask=mask, eos_token_id=eos, pad_token_id=pad)


def test_greedy_generate_matches_hf_generate(pair):
    ids, mask, pad = _left_padded(pair.tok, PROMPTS)
    eos = pair.hf.generation_config.eos_token_id
    ref, logits = _hf_generate_with_logits(pair.hf, ids, mask, pad, 20, eos)
    out = greedy_generate(pair.bridge, ids, mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=pad)
    assert_same_greedy(out, ref, logits, ForwardShape.of(pair.hf), eos)


def test_greedy_generate_per_row_eos_matches_hf(pair):
    """Declare a token that row 0 emits at step 3 to be EOS: rows end at different steps, then pad."""
    ids, mask, pad = _left_padded(pair.tok, PROMPTS)
    free = _hf_generate(pair.hf, ids, mask, pad, 12, None)
    eos = int(free[0, 3])
    ref, logits = _hf_generate_with_logits(pair.hf, ids, mask, pad, 12, eos)
    out = greedy_generate(pair.bridge, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=pad)
    assert_same_greedy(out, ref, logits, ForwardShape.of(pair.hf), eos)
    ended = [(row == eos).nonzero()[0, 0].item() for row in out if (row == eos).any()]
    assert ended and min(ended) < out.shape[1] - 1, "some row must end early for this test to mean anything"


def test_hooks_fire_every_step_and_equal_o_proj_surgery(pair):
    """Zeroing head 0's hook_z in layer 1 during generation = zeroing its o_proj columns in an HF copy."""
    ids, mask, pad = _left_padded(pair.tok, PROMPTS)
    d_head = pair.bridge.cfg.d_head
    surgery = copy.deepcopy(pair.hf)
    surgery.model.layers[1].self_attn.o_proj.weight[:, :d_head] = 0.0
    ref, logits = _hf_generate_with_logits(surgery, ids, mask, pad, 16, None)
    calls = []

    def zero_head0(z, hook):
        calls.append(z.shape[1])
        z[:, :, 0] = 0.0
        return z

    with pair.bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_z", zero_head0)]):
        out = greedy_generate(pair.bridge, ids, mask, max_new_tokens=16)
    assert_same_greedy(out, ref, logits, ForwardShape.of(surgery))
    assert calls == [ids.shape[1]] + [1] * 15  # prefill, then one position per decode step
    clean = _hf_generate(pair.hf, ids, mask, pad, 16, None)
    if pair.name != "stories260K":  # on the random models head 0 moves at least one greedy token
        assert not torch.equal(clean, ref)


def test_greedy_generate_rejects_bad_mask(pair):
    ids, mask, _ = _left_padded(pair.tok, PROMPTS)
    with pytest.raises(ValueError, match="attention_mask"):
        greedy_generate(pair.bridge, ids, mask[:, 1:], max_new_tokens=2)


def _stops_from(model, prompts: list[str], n: int) -> list[str]:
    """Stop strings that really occur: a 2-character piece from the middle of two free generations."""
    free = generate_until(model, prompts, until=[], max_gen_toks=n)
    stops = [g.text[len(g.text) // 2 : len(g.text) // 2 + 2] for g in free[:2]]
    assert all(len(s) == 2 for s in stops)
    return stops + ["\n"]


def _lm_eval(hf, path, contexts, until, max_gen_toks, batch_size) -> list[str]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=hf, tokenizer=AutoTokenizer.from_pretrained(path), batch_size=batch_size)
    kwargs = {"until": list(until), "max_gen_toks": max_gen_toks, "do_sample": False}
    reqs = [Instance(request_type="generate_until", doc={}, arguments=(c, dict(kwargs)), idx=0) for c in contexts]
    return lm.generate_until(reqs, disable_tqdm=True)


def test_generate_until_equals_lm_eval(pair):
    until = _stops_from(pair.bridge, PROMPTS, 24)
    ours = generate_until(pair.bridge, PROMPTS, until=until, max_gen_toks=24, batch_size=2)
    ref = _lm_eval(pair.hf, pair.path, PROMPTS, until, 24, 2)
    assert [g.text for g in ours] == ref
    assert any(g.hit_stop and g.n_tokens < 24 for g in ours), "a stop string must end some row early"
    assert not any(g.prompt_truncated for g in ours)


def test_generate_until_truncates_like_lm_eval(short_ctx):
    long = [PREFIX + q for q in QUESTIONS[:3]] + ["Lily"]
    max_gen = 16
    until = ["\n"]
    ours = generate_until(short_ctx.bridge, long, until=until, max_gen_toks=max_gen, batch_size=3)
    ref = _lm_eval(short_ctx.hf, short_ctx.path, long, until, max_gen, 3)
    assert [g.text for g in ours] == ref
    limit = max_context_length(short_ctx.bridge) - max_gen
    expected = [len(short_ctx.tok(c)["input_ids"]) > limit for c in long]
    assert [g.prompt_truncated for g in ours] == expected and any(expected) and not all(expected)
    with pytest.raises(ValueError, match="max_gen_toks"):
        generate_until(short_ctx.bridge, long, until=until, max_gen_toks=48)


def test_prefix_reuse_equals_full_prompts(pair):
    stops = ["\n", "Q:"]
    full = generate_until(pair.bridge, [PREFIX + q for q in QUESTIONS], until=stops, max_gen_toks=12, batch_size=2)
    reused = generate_until(pair.bridge, QUESTIONS, until=stops, max_gen_toks=12, batch_size=2, prefix=PREFIX)
    assert reused == [Generation(g.text, g.n_tokens, g.hit_stop, g.prompt_truncated, True) for g in full]
    assert not any(g.prefix_reused for g in full)


def test_prefix_reuse_under_hooks_and_boundary_fallback(pair):
    """Under an intervention the shared cache is built under the hook; a prefix that does not
    end on a token boundary of the full text falls back to no reuse for that request."""
    text = PREFIX + "Q: The quick brown fox jumps over the lazy dog. Once upon a time?\nA:"
    cut = next(
        k
        for k in range(len(PREFIX) + 1, len(text))
        if pair.tok(text)["input_ids"][: len(pair.tok(text[:k])["input_ids"])] != pair.tok(text[:k])["input_ids"]
    )
    ragged = text[:cut]  # ends inside a token of the full text
    prompts = [text[cut:], "\n\nQ: Lily?\nA:"]
    contexts = [ragged + p for p in prompts]
    ragged_ids = pair.tok(ragged)["input_ids"]
    boundary = [pair.tok(c)["input_ids"][: len(ragged_ids)] == ragged_ids for c in contexts]
    assert not all(boundary), "precondition: at least one request must cross a token boundary"

    def zero_head0(z, hook):
        z[:, :, 0] = 0.0
        return z

    with pair.bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_z", zero_head0)]):
        full = generate_until(pair.bridge, contexts, until=["\n"], max_gen_toks=10)
        reused = generate_until(pair.bridge, prompts, until=["\n"], max_gen_toks=10, prefix=ragged)
        plain_q = generate_until(pair.bridge, [PREFIX + q for q in QUESTIONS[:3]], until=["\n"], max_gen_toks=10)
        reused_q = generate_until(pair.bridge, QUESTIONS[:3], until=["\n"], max_gen_toks=10, prefix=PREFIX)
    assert [g.text for g in reused] == [g.text for g in full]
    assert [g.prefix_reused for g in reused] == boundary
    assert [g.text for g in reused_q] == [g.text for g in plain_q]
    assert all(g.prefix_reused for g in reused_q)


def test_no_stop_runs_to_max_gen_toks(pair):
    n = 10
    eos = pair.hf.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    for prompt in PROMPTS:  # the first prompt whose HF continuation runs to the limit without EOS
        ids = torch.tensor([pair.tok(prompt)["input_ids"]])
        ref = _hf_generate(pair.hf, ids, torch.ones_like(ids), _pad_id(pair.tok), n, eos)[0]
        if ref.shape[0] == n and not eos_ids & set(ref.tolist()):
            break
    else:
        pytest.fail("precondition: some prompt must run to max_new_tokens under HF generate")
    (g,) = generate_until(pair.bridge, [prompt], until=["\x00never"], max_gen_toks=n)
    assert g == Generation(pair.tok.decode(ref, skip_special_tokens=True), n, False, False, False)


def test_generate_until_bad_input(pair):
    # TypeError: the typechecker under pytest rejects it first; ValueError otherwise.
    with pytest.raises((ValueError, TypeError), match="until"):
        generate_until(pair.bridge, ["a"], until="\n")  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError), match="prompts"):
        generate_until(pair.bridge, "a", until=["\n"])  # type: ignore[arg-type]
    assert generate_until(pair.bridge, [], until=["\n"]) == []


QWEN_LIKE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


def test_chat_template_thinking_switch(tmp_path):
    from depthprobe.tiny import make_tokenizer

    tok = make_tokenizer()
    tok.chat_template = QWEN_LIKE_TEMPLATE
    base = "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    assert apply_chat_template(tok, "Why?", enable_thinking=None) == base
    assert apply_chat_template(tok, "Why?", enable_thinking=True) == base
    assert apply_chat_template(tok, "Why?", enable_thinking=False) == base + "<think>\n\n</think>\n\n"
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        apply_chat_template(tok, "Why?", enable_thinking=False)


@pytest.mark.parametrize(
    "text",
    [
        "<think>\nlet me see 2+2</think>\n\nThe answer is 4.",
        "no reasoning block",
        "a</think>b</think>  c",
        "<think>ran out of budget",
        "",
    ],
)
def test_strip_thinking_matches_lm_eval(text):
    from lm_eval.models.utils import postprocess_generated_text

    assert strip_thinking(text) == postprocess_generated_text(text, stop=None, think_end_token=THINK_END)
