"""The suite's one tolerance policy: how far two float32 computations of the same number may differ.

Two float32 computations of the same quantity that differ only in the order of their
operations (batch size, padding, a KV cache, a tail-only forward, another CPU kernel set via
``ATEN_CPU_CAPABILITY``, another thread count) round differently. The bound is derived from
float32 rounding, not fitted to one machine:

* ``u = 2**-24`` is the unit roundoff of float32 (half of ``torch.finfo(float32).eps``).
* A reduction of length ``K`` (an inner product, a log-sum-exp) computed in any order is off
  by about ``sqrt(K) * u`` times the sum of its absolute terms with high probability
  (Higham & Mary, "A new approach to probabilistic rounding error analysis", SIAM J. Sci.
  Comput. 2019); the worst case ``K * u`` is never approached by real kernels.
* A logit is the end of ``L + 1`` such stages (each decoder layer adds its rounded reductions to
  the residual stream, then the unembedding). ``K`` is the longest reduction of the forward:
  ``max(hidden size, MLP width, vocabulary)``. The error of the last stage is relative to the
  logits' magnitude ``S`` (the largest ``|logit|`` of the compared rows).
* Both computations round, so their difference is bounded by twice one error::

      |Δ logit| <= logit_bound = 2 * (L + 1) * sqrt(K) * u * S

* A log-likelihood summed over ``n`` continuation tokens: each term is a logit minus a
  log-sum-exp over the vocabulary, each within one logit bound, and the ``n``-term float32
  sum adds ``n * u * |ll|``::

      |Δ ll| <= 2 * n * logit_bound + n * u * |ll|

**bfloat16** (the dtype of the study's 8B runs, checked on the GPU by ``benchmarks/device_check.py``) is
derived the same way. Matrix products read bfloat16 operands, accumulate in float32 and round
their result to bfloat16; norms and softmax compute in float32 and round their result too. So
each of the ``L + 1`` stages adds the float32 reduction error above plus one bfloat16 rounding of
its result, ``u_bf16 = 2**-8`` relative::

      |Δ logit| <= bf16_logit_bound = 2 * (L + 1) * (u_bf16 + sqrt(K) * u) * S

and a summed log-likelihood (log-softmax in bfloat16, as lm-eval computes it in the model's
dtype) ``|Δ ll| <= 2 * n * bf16_logit_bound + n * u_bf16 * |ll|``. :func:`bound_for` picks the
policy of a dtype.

These bounds hold on every kernel set (the suite runs under ``default``, ``avx2`` and the native
set in CI). They are looser than the differences one machine happens to show, so every
exactness claim that a looser float32 bound could hide also has a float64 twin
(``tests/test_float64.py``) at ``FLOAT64_ATOL``, where rounding is 2**29 times smaller and no
kernel set changes the verdict.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

U32 = 2.0**-24
#: Unit roundoff of bfloat16 (8 significand bits).
UBF16 = 2.0**-8
#: Absolute bound of the float64 twins: float64 rounding of these tiny models is below 1e-13.
FLOAT64_ATOL = 1e-9


@dataclass(frozen=True)
class ForwardShape:
    """What the rounding of one forward depends on: its depth and its longest reduction."""

    n_layers: int
    reduction: int

    @classmethod
    def of(cls, model: Any) -> ForwardShape:
        """From a Hugging Face model, a TransformerBridge, or their config."""
        config = getattr(getattr(model, "original_model", model), "config", model)
        widths = (config.hidden_size, getattr(config, "intermediate_size", 0) or 0, config.vocab_size)
        return cls(n_layers=int(config.num_hidden_layers), reduction=int(max(widths)))


def logit_bound(shape: ForwardShape, scale: float) -> float:
    """Bound on ``|Δ logit|`` between two float32 forwards of logits of magnitude ``scale``."""
    return 2 * (shape.n_layers + 1) * math.sqrt(shape.reduction) * U32 * float(scale)


def loglikelihood_bound(shape: ForwardShape, scale: float, n_tokens: int, ll: float) -> float:
    """Bound on ``|Δ ll|`` for a log-likelihood summed over ``n_tokens`` tokens (logits of magnitude ``scale``)."""
    return 2 * n_tokens * logit_bound(shape, scale) + n_tokens * U32 * abs(float(ll))


def bf16_logit_bound(shape: ForwardShape, scale: float) -> float:
    """Bound on ``|Δ logit|`` between two bfloat16 forwards (float32 accumulation) of logits of magnitude ``scale``."""
    return 2 * (shape.n_layers + 1) * (UBF16 + math.sqrt(shape.reduction) * U32) * float(scale)


def bf16_loglikelihood_bound(shape: ForwardShape, scale: float, n_tokens: int, ll: float) -> float:
    """Bound on ``|Δ ll|`` for a bfloat16 log-likelihood summed over ``n_tokens`` tokens."""
    return 2 * n_tokens * bf16_logit_bound(shape, scale) + n_tokens * UBF16 * abs(float(ll))


def bound_for(dtype: torch.dtype) -> tuple[Any, Any]:
    """``(logit bound, log-likelihood bound)`` functions of the policy for ``dtype`` (float32 or bfloat16)."""
    if dtype == torch.float32:
        return logit_bound, loglikelihood_bound
    if dtype == torch.bfloat16:
        return bf16_logit_bound, bf16_loglikelihood_bound
    raise ValueError(f"no tolerance policy for {dtype}; valid: torch.float32, torch.bfloat16")


def logit_scale(logits: torch.Tensor) -> float:
    """``S``: the largest ``|logit|`` of the rows compared."""
    return float(logits.detach().abs().max())


def assert_logits_close(got: torch.Tensor, expected: torch.Tensor, shape: ForwardShape, what: str = "") -> float:
    """Assert ``max |got - expected|`` is within the float32 logit bound; return that difference."""
    diff = float((got - expected).abs().max())
    bound = logit_bound(shape, logit_scale(expected))
    assert diff <= bound, f"{what} max |Δ logit| {diff:.3g} exceeds the float32 bound {bound:.3g}"
    return diff


def top2_margins(logits: torch.Tensor) -> torch.Tensor:
    """Per row, the gap between the largest and second-largest logit (the greedy choice's safety)."""
    top = logits.float().topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def hf_greedy(hf: Any, ids: torch.Tensor, n: int, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face greedy ``generate``: the new tokens [batch, n] and the logits [batch, n, vocab] each was chosen from."""
    out = hf.generate(
        ids, max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True, **kwargs
    )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.scores, dim=1)


def assert_same_greedy(
    got: torch.Tensor,
    expected: torch.Tensor,
    step_logits: torch.Tensor,
    shape: ForwardShape,
    eos_token_id: int | None = None,
) -> float:
    """Greedy tokens [batch, n] must be identical; a near-tie a kernel set could flip is detected and reported.

    ``step_logits`` [batch, n, vocab] are the reference's logits at each generated step (see
    :func:`hf_greedy`). Steps after a row's EOS are ignored. If any live step's top-2 margin is
    at or below the float32 logit bound, identical tokens cannot be required on every CPU: the
    test fails saying so (it never skips), and another prompt must be chosen. Returns the
    smallest live margin.
    """
    live = torch.ones(expected.shape, dtype=torch.bool)
    if eos_token_id is not None:
        ended = (expected == eos_token_id).int().cumsum(-1)
        live = (ended == 0) | ((ended == 1) & (expected == eos_token_id))
    margins = top2_margins(step_logits[:, : expected.shape[1]])
    bound = logit_bound(shape, logit_scale(step_logits))
    smallest = float(margins[live].min())
    assert smallest > bound, (
        f"near-tie: a greedy step's top-2 margin {smallest:.3g} <= float32 bound {bound:.3g}; a CPU kernel set "
        f"may flip it, so these prompts cannot prove token equality"
    )
    if not torch.equal(got, expected):
        row, col = (got != expected).nonzero()[0].tolist()
        raise AssertionError(
            f"greedy tokens differ first at row {row}, step {col} ({got[row].tolist()} vs {expected[row].tolist()}); "
            f"the reference's top-2 margin there is {float(margins[row, col]):.3g}, above the float32 bound "
            f"{bound:.3g}: a real difference, not rounding"
        )
    return smallest


def text_logit_scale(model: Any, texts: list[str]) -> float:
    """``S`` of a model (bridge or Hugging Face, under whatever hooks are active) on ``texts``, one forward each."""
    tok = getattr(model, "tokenizer", None) or _tokenizer_of(model.config._name_or_path)
    config = getattr(model, "original_model", model).config
    max_len = int(getattr(config, "max_position_embeddings", 2048))
    scale = 0.0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"][-max_len:]])
            out = model(ids)
            scale = max(scale, logit_scale(getattr(out, "logits", out)))
    return scale


@functools.cache
def _tokenizer_of(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def assert_loglikelihoods_close(
    got: list[float], expected: list[float], n_tokens: list[int], shape: ForwardShape, scale: float, what: str = ""
) -> float:
    """Each pair of summed log-likelihoods within :func:`loglikelihood_bound`; returns the largest |Δ|."""
    worst = 0.0
    for a, b, n in zip(got, expected, n_tokens, strict=True):
        bound = loglikelihood_bound(shape, scale, n, b)
        assert abs(a - b) <= bound, f"{what} |Δ ll| {abs(a - b):.3g} at ll={b:.4f} ({n} tokens) exceeds {bound:.3g}"
        worst = max(worst, abs(a - b))
    return worst
