"""lm-eval 0.4.13's tokenisation rules, in one place.

lm-eval itself has two rules for a leading BOS, and depthprobe follows each where lm-eval uses it:

- log-likelihood requests (``HFLM.tok_encode``): special tokens are added unless the text already
  starts with the decoded *prefix token* (BOS, else EOS); a pair is built by ``_encode_pair``;
- generation contexts (``HFLM.tok_batch_encode``): no special tokens when the text starts with the
  tokenizer's ``bos_token`` string, else ``add_bos_token`` when given, else the tokenizer's default.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["encode_context", "encode_pair", "left_pad", "prefix_token_id", "tok_encode"]


def prefix_token_id(tokenizer: Any) -> int:
    """lm-eval's ``prefix_token_id``: BOS, else EOS (the context of an empty-context request)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def tok_encode(tokenizer: Any, text: str) -> list[int]:
    """lm-eval ``HFLM.tok_encode`` with default settings: special tokens unless ``text`` starts with BOS."""
    bos = tokenizer.decode(prefix_token_id(tokenizer))
    if bos and text.startswith(bos):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) exactly as lm-eval 0.4.13 builds a loglikelihood request.

    Trailing whitespace of the context moves to the continuation; the continuation's tokens are
    the tail of ``tok(context + continuation)`` after ``len(tok(context))`` tokens.
    """
    if not context:
        return [prefix_token_id(tokenizer)], tok_encode(tokenizer, continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation)
    ctx = tok_encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


def encode_context(tokenizer: Any, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """lm-eval's generation-context encoding: no special tokens when ``text`` already starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    kwargs = {}
    if bos is not None and text.startswith(bos):
        kwargs["add_special_tokens"] = False
    elif add_special_tokens is not None:
        kwargs["add_special_tokens"] = add_special_tokens
    return tokenizer(text, **kwargs)["input_ids"]


def left_pad(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Left-padded token ids and attention mask (1 for real tokens) of ``rows``."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask
