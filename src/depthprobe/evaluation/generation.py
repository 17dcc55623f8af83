"""Batched greedy generation through the TransformerBridge, matching lm-eval and HF ``generate``.

Three parts: request preparation (:func:`prepare_requests`: lm-eval's tokenization, left
truncation, batching order and the shared-prefix KV cache), a decoder
(:mod:`depthprobe.evaluation.decode`, the seam for a faster backend) and the stop policy
(:mod:`depthprobe.evaluation.stops`). ``generate_until`` reproduces lm-eval 0.4.13's
``HFLM.generate_until`` (stop strings on decoded text, the EOS string always a stop);
``greedy_generate`` reproduces Hugging Face ``generate(do_sample=False)`` token for token.
Every token is produced by a bridge forward, so active hooks are in force throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import DynamicCache

from depthprobe import adapter
from depthprobe.evaluation.decode import Decoder, HookedDecoder, prefix_cache
from depthprobe.evaluation.stops import StopPolicy
from depthprobe.evaluation.tokenize import encode_context, left_pad

__all__ = [
    "Generation",
    "GenerationPlan",
    "PreparedRequests",
    "generate_until",
    "greedy_generate",
    "max_context_length",
    "plan_generation",
    "prepare_requests",
]

# Shape aliases: typeguard's import hook (pytest addopts) parses string literals inside
# subscripted annotations as Python, and "batch pos" is not, so the shapes are named here.
TokenIds = Int[Tensor, "batch pos"]
AttentionMask = Int[Tensor, "batch mask_pos"]
NewTokenIds = Int[Tensor, "batch new"]


@dataclass(frozen=True)
class Generation:
    """One request's greedy continuation.

    ``text`` is cut at the first stop string (as lm-eval returns it); ``n_tokens`` counts the
    generated tokens including the one that completed a stop; ``hit_stop`` is False when the
    generation ran to ``max_gen_toks`` without EOS or a stop string; ``prompt_truncated`` when
    the prompt was cut from the left to fit the context; ``prefix_reused`` when the shared
    prefix's KV cache was reused for this request; ``tokens`` are the generated ids (not compared:
    two generations are equal when what lm-eval reports is).
    """

    text: str
    n_tokens: int
    hit_stop: bool
    prompt_truncated: bool
    prefix_reused: bool = False
    tokens: tuple[int, ...] = field(default=(), compare=False, repr=False)


def max_context_length(model: TransformerBridge) -> int:
    """The model's context length as lm-eval resolves it (config, then tokenizer, then 2048)."""
    return adapter.max_context_length(model)


@torch.inference_mode()
def greedy_generate(
    model: TransformerBridge,
    input_ids: TokenIds,
    attention_mask: AttentionMask,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = None,
    stop: Sequence[str] | None = None,
    past_key_values: DynamicCache | None = None,
    pad_token_id: int | None = None,
    decoder: Decoder | None = None,
) -> NewTokenIds:
    """Greedy continuation of a left-padded batch with KV cache; hooks fire at every step.

    Equals ``hf_model.generate(input_ids, attention_mask=..., do_sample=False,
    max_new_tokens=..., eos_token_id=..., pad_token_id=<pad>)[:, pos:]`` token for token: a
    row ends after an EOS id or once its decoded text contains a ``stop`` string; ended rows
    are filled with ``pad_token_id`` (default: the bridge tokenizer's pad, unk or eos id) until
    every row has ended.
    ``past_key_values`` is a prefix cache (batch 1 or batch; it is copied, never mutated);
    ``attention_mask`` then covers either the new tokens only or cache + new tokens.
    ``decoder`` runs the decoding (default :class:`~depthprobe.evaluation.decode.HookedDecoder`).
    """
    policy = StopPolicy(frozenset(adapter.as_id_set(eos_token_id)), tuple(stop or ()), None, model.tokenizer)
    decoded = (decoder or HookedDecoder())(
        model, input_ids, attention_mask, max_new_tokens=max_new_tokens, policy=policy, past_key_values=past_key_values
    )
    if pad_token_id is None:
        pad_token_id = adapter.pad_token_id(model.tokenizer) if model.tokenizer is not None else 0
    width = max(len(t) for t in decoded.tokens)
    rows = [t + [pad_token_id] * (width - len(t)) for t in decoded.tokens]
    return torch.tensor(rows, dtype=torch.long, device=input_ids.device).reshape(len(rows), width)


@dataclass
class PreparedRequests:
    """Requests ready to decode: token ids per request, which were truncated, which reuse the prefix
    cache (their tokens after the prefix), and the jobs ``(request indices, uses prefix)`` in lm-eval's order."""

    tokens: list[list[int]]
    truncated: list[bool]
    reuse: dict[int, list[int]] = field(default_factory=dict)
    prefix_ids: list[int] | None = None
    jobs: list[tuple[list[int], bool]] = field(default_factory=list)


def prepare_requests(
    tokenizer: object,
    prompts: list[str],
    *,
    max_ctx: int,
    batch_size: int,
    prefix: str | None = None,
    add_special_tokens: bool | None = None,
) -> PreparedRequests:
    """lm-eval's request preparation: tokenize ``prefix + prompt``, left-truncate to ``max_ctx``, sort
    longest first, batch; requests whose tokens start with the prefix's tokens are marked to reuse its cache."""
    contexts = [(prefix or "") + p for p in prompts]
    full = [encode_context(tokenizer, c, add_special_tokens) for c in contexts]
    truncated = [len(t) > max_ctx for t in full]
    full = [t[-max_ctx:] for t in full]
    reuse: dict[int, list[int]] = {}
    prefix_ids = None
    if prefix:
        prefix_ids = encode_context(tokenizer, prefix, add_special_tokens)
        n = len(prefix_ids)
        for i, toks in enumerate(full):
            if not truncated[i] and len(toks) > n and toks[:n] == prefix_ids:
                reuse[i] = toks[n:]

    def sort_key(i: int) -> tuple[int, str]:
        return (-len(full[i]), contexts[i])

    def batches(order: list[int]) -> list[list[int]]:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    plain = sorted((i for i in range(len(prompts)) if i not in reuse), key=sort_key)
    shared = sorted(reuse, key=sort_key)
    jobs = [(b, False) for b in batches(plain)] + [(b, True) for b in batches(shared)]
    return PreparedRequests(full, truncated, reuse, prefix_ids if reuse else None, jobs)


@torch.inference_mode()
def generate_until(
    model: TransformerBridge,
    prompts: list[str],
    *,
    until: list[str],
    max_gen_toks: int = 256,
    batch_size: int = 8,
    prefix: str | None = None,
    add_special_tokens: bool | None = None,
    think_end_token: str | None = None,
    decoder: Decoder | None = None,
) -> list[Generation]:
    """Greedy generation for many prompts, as lm-eval's ``HFLM.generate_until`` (results in input order).

    The context of request i is ``(prefix or "") + prompts[i]``. Requests are sorted by token
    length (longest first, as lm-eval), batched with left padding, left-truncated to
    ``max_context_length(model) - max_gen_toks`` tokens, and stopped per row at EOS or at the
    first of ``until`` (plus the EOS string) in the decoded text, which is cut there.
    With ``prefix``, its KV cache is computed once under the active hooks and shared by every
    request whose tokenization starts with the prefix's tokens (others run without reuse;
    see ``Generation.prefix_reused``). ``add_special_tokens`` is lm-eval's ``add_bos_token``
    (None: the tokenizer's default). With ``think_end_token`` (e.g. ``"</think>"``), stop strings
    apply only after it and the text is what follows it, as lm-eval's ``think_end_token``.
    ``decoder`` runs the decoding (default :class:`~depthprobe.evaluation.decode.HookedDecoder`).
    """
    plan = plan_generation(
        model,
        prompts,
        until=until,
        max_gen_toks=max_gen_toks,
        batch_size=batch_size,
        prefix=prefix,
        add_special_tokens=add_special_tokens,
        think_end_token=think_end_token,
    )
    return plan.run(model, decoder or HookedDecoder())[0] if plan else []


@dataclass(frozen=True)
class GenerationPlan:
    """Prepared requests, stop policy and budget of one ``generate_until`` call: the one copy of its rules.

    :meth:`run` decodes the requests with a decoder; ``copies=k`` decodes every batch as ``k`` row
    blocks (a decoder that runs block ``j`` under its own condition, such as
    :class:`~depthprobe.evaluation.fast_decode.BlockDecoder`), and returns one list per block.
    """

    requests: PreparedRequests
    policy: StopPolicy
    max_gen_toks: int
    pad: int
    device: Any

    def __bool__(self) -> bool:
        return bool(self.requests.tokens)

    def run(self, model: Any, decode: Decoder, *, copies: int = 1) -> list[list[Generation]]:
        results: list[list[Generation | None]] = [[None] * len(self.requests.tokens) for _ in range(copies)]
        self.decode_jobs(model, decode, self.requests.jobs, results)
        return results  # type: ignore[return-value]

    def decode_jobs(
        self,
        model: Any,
        decode: Decoder,
        jobs: Sequence[tuple[list[int], bool]],
        results: list[list[Any]],
        cache: Any = None,
    ) -> None:
        """Decode ``jobs`` (some of the requests' batches) into ``results[block][request]``, one list per block.

        ``cache``: the prefix's KV cache as ``decode`` builds it, when the caller has it already (decoders copy it).
        """
        req, k = self.requests, len(results)
        if cache is None and req.prefix_ids is not None:
            # a decoder that runs another forward (the hook-free path) builds the prefix cache its own way
            cache = getattr(decode, "prefix_cache", prefix_cache)(model, req.prefix_ids, self.device)
        for batch, use_prefix in jobs:
            rows = [req.reuse[i] for i in batch] if use_prefix else [req.tokens[i] for i in batch]
            ids, mask = left_pad(rows, self.pad)
            decoded = decode(
                model,
                ids.repeat(k, 1).to(self.device),
                mask.repeat(k, 1).to(self.device),
                max_new_tokens=self.max_gen_toks,
                policy=self.policy,
                past_key_values=cache if use_prefix else None,
            )
            for j in range(k):
                for row, i in enumerate(batch):
                    results[j][i] = self.generation(
                        i, decoded.tokens[j * len(batch) + row], decoded.hit_stop[j * len(batch) + row], use_prefix
                    )

    def generation(self, request: int, tokens: Sequence[int], hit_stop: bool, prefix_reused: bool) -> Generation:
        """The :class:`Generation` of request ``request`` whose generated ids are ``tokens``."""
        return Generation(
            text=self.policy.text(tokens),
            n_tokens=len(tokens),
            hit_stop=hit_stop,
            prompt_truncated=self.requests.truncated[request],
            prefix_reused=prefix_reused,
            tokens=tuple(tokens),
        )


def plan_generation(
    model: TransformerBridge,
    prompts: list[str],
    *,
    until: list[str],
    max_gen_toks: int = 256,
    batch_size: int = 8,
    prefix: str | None = None,
    add_special_tokens: bool | None = None,
    think_end_token: str | None = None,
) -> GenerationPlan:
    """Check the arguments of ``generate_until`` and prepare its requests and stop policy."""
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a list of strings")
    if isinstance(until, str) or not all(isinstance(s, str) for s in until):
        raise ValueError(f"until must be a list of strings, got {until!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_gen_toks < 1:
        raise ValueError(f"max_gen_toks must be >= 1, got {max_gen_toks}")
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("generate_until needs a model with a tokenizer (model.tokenizer is None)")
    context = max_context_length(model)
    max_ctx = context - max_gen_toks
    if max_ctx <= 0 and prompts:
        raise ValueError(f"max_gen_toks={max_gen_toks} must be less than the model's context length {context}")
    stops = list(until)
    eos_text = (
        tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False)
        if tokenizer.eos_token_id is not None
        else None
    )
    if eos_text is not None and eos_text not in stops:
        stops.append(eos_text)
    policy = StopPolicy(frozenset(adapter.eos_token_ids(model)), tuple(stops), think_end_token, tokenizer)
    req = prepare_requests(
        tokenizer, prompts, max_ctx=max_ctx, batch_size=batch_size, prefix=prefix, add_special_tokens=add_special_tokens
    )
    return GenerationPlan(req, policy, max_gen_toks, adapter.pad_token_id(tokenizer), model.cfg.device)
