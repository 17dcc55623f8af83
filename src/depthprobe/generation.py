"""Batched greedy generation through the TransformerLens bridge, matching lm-eval and HF ``generate``.

Every token is produced by a bridge forward, so hooks active around a call (``with
model.hooks(...)``) fire at prefill and at every decode step: an intervention is in force for
the whole generation. Decoding reproduces Hugging Face ``generate(do_sample=False)`` token for
token (left padding, mask-derived position ids, ``DynamicCache``), and ``generate_until``
reproduces lm-eval 0.4.13's ``HFLM.generate_until`` (tokenization, left truncation, batching
order, stop strings on decoded text, the EOS string always a stop).
"""


import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import DynamicCache

__all__ = ["Generation", "greedy_generate", "generate_until", "max_context_length"]

# Shape aliases: typeguard's import hook (pytest addopts) parses string literals inside
# subscripted annotations as Python, and "batch pos" is not, so the shapes are named here.
TokenIds = Int[Tensor, "batch pos"]
AttentionMask = Int[Tensor, "batch mask_pos"]
NewTokenIds = Int[Tensor, "batch new"]

#: lm-eval's fallback context length when neither config nor tokenizer names one.
_DEFAULT_MAX_LENGTH = 2048
#: ``tokenizer.model_max_length`` when the tokenizer sets none (transformers' sentinel).
_TOKENIZER_INFINITY = int(1e30)


@dataclass(frozen=True)
class Generation:
    """One request's greedy continuation.

    ``text`` is cut at the first stop string (as lm-eval returns it); ``n_tokens`` counts the
    generated tokens including the one that completed a stop; ``hit_stop`` is False when the
    generation ran to ``max_gen_toks`` without EOS or a stop string; ``prompt_truncated`` when
    the prompt was cut from the left to fit the context; ``prefix_reused`` when the shared
    prefix's KV cache was reused for this request.
    """

    text: str
    n_tokens: int
    hit_stop: bool
    prompt_truncated: bool
    prefix_reused: bool = False


@dataclass(frozen=True)
class _Decoded:
    tokens: list[list[int]]  # generated ids per row, up to and including its stop token
    hit_stop: list[bool]


def _eos_ids(model: TransformerBridge, eos_token_id: int | Sequence[int] | None) -> set[int]:
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(i) for i in eos_token_id}


def _pad_id(tokenizer) -> int:
    """lm-eval's pad choice (``configure_pad_token``): pad, else unk, else eos, else 0."""
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _cache_kwargs(model: TransformerBridge, cache: DynamicCache) -> dict:
    """Hand the cache to Hugging Face under the name its forward takes.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name still works but
    warns); older 5.x only know ``past_key_values``. ``models.load_model``'s shim makes the
    bridge's attention read either name.
    """
    params = inspect.signature(model.original_model.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    return {name: cache, "use_cache": True}


def _forward_last_logits(model: TransformerBridge, ids, mask, positions, cache) -> Tensor:
    """Logits of the last position only (HF generate's ``logits_to_keep=1``)."""
    logits = model(
        ids,
        return_type="logits",
        attention_mask=mask,
        position_ids=positions,
        logits_to_keep=1,
        **_cache_kwargs(model, cache),
    )
    return logits[:, -1, :]


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index where lm-eval would cut ``text`` (earliest occurrence of any non-empty stop)."""
    hits = [text.find(s) for s in stop if s]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else None


def _decode(
    model: TransformerBridge,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    stop: Sequence[str],
    past_key_values: DynamicCache | None,
    think_end: str | None = None,
) -> _Decoded:
    batch, n_new = input_ids.shape
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if attention_mask.shape[0] != batch:
        raise ValueError(f"attention_mask batch {attention_mask.shape[0]} != input_ids batch {batch}")
    if past_key_values is not None:
        cache = copy.deepcopy(past_key_values)
        past_len = cache.get_seq_length()
        cache_batch = cache.layers[0].keys.shape[0] if past_len else batch
        if cache_batch == 1 and batch > 1:
            cache.batch_repeat_interleave(batch)
        elif cache_batch != batch:
            raise ValueError(f"past_key_values batch {cache_batch} must be 1 or {batch}")
    else:
        cache, past_len = DynamicCache(), 0
    if attention_mask.shape[1] == n_new and past_len:
        attention_mask = torch.cat(
            [attention_mask.new_ones(batch, past_len), attention_mask], dim=1
        )
    if attention_mask.shape[1] != past_len + n_new:
        raise ValueError(
            f"attention_mask has {attention_mask.shape[1]} positions; expected {n_new} "
            f"(new tokens) or {past_len + n_new} (cache + new tokens)"
        )
    tokenizer = model.tokenizer
    if stop and tokenizer is None:
        raise ValueError("stop strings need model.tokenizer to decode generations")
    pad = _pad_id(tokenizer) if tokenizer is not None else 0
    device = input_ids.device
    mask = attention_mask.to(device=device, dtype=torch.long)
    # Hugging Face generate: positions are the running count of attended tokens.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    step_pos = positions[:, -n_new:]
    step_ids = input_ids
    out: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    hit = [False] * batch
    for _ in range(max_new_tokens):
        logits = _forward_last_logits(model, step_ids, mask, step_pos, cache)
        next_ids = logits.float().argmax(dim=-1).tolist()
        for row, tok in enumerate(next_ids):
            if done[row]:
                next_ids[row] = pad
                continue
            out[row].append(tok)
            if tok in eos_ids:
                done[row] = hit[row] = True
            elif stop:
                text = tokenizer.decode(out[row], skip_special_tokens=True)
                if think_end is not None:
                    if think_end not in text:
                        continue
                    text = text.split(think_end)[-1].lstrip()
                if _first_stop(text, stop) is not None:
                    done[row] = hit[row] = True
        if all(done):
            break
        step_ids = torch.tensor(next_ids, dtype=input_ids.dtype, device=device)[:, None]
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        step_pos = step_pos[:, -1:] + 1
    return _Decoded(out, hit)


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
) -> NewTokenIds:
    """Greedy continuation of a left-padded batch with KV cache; hooks fire at every step.

    Equals ``hf_model.generate(input_ids, attention_mask=..., do_sample=False,
    max_new_tokens=..., eos_token_id=..., pad_token_id=<pad>)[:, pos:]`` token for token: a
    row ends after an EOS id or once its decoded text contains a ``stop`` string; ended rows
    are filled with ``pad_token_id`` (default: the bridge tokenizer's pad, unk or eos id) until
    every row has ended.
    ``past_key_values`` is a prefix cache (batch 1 or batch; it is copied, never mutated);
    ``attention_mask`` then covers either the new tokens only or cache + new tokens.
    """
    decoded = _decode(
        model,
        input_ids,
        attention_mask,
        max_new_tokens=max_new_tokens,
        eos_ids=_eos_ids(model, eos_token_id),
        stop=list(stop or []),
        past_key_values=past_key_values,
    )
    if pad_token_id is None:
        pad_token_id = _pad_id(model.tokenizer) if model.tokenizer is not None else 0
    pad = pad_token_id
    width = max(len(t) for t in decoded.tokens)
    rows = [t + [pad] * (width - len(t)) for t in decoded.tokens]
    return torch.tensor(rows, dtype=torch.long, device=input_ids.device).reshape(len(rows), width)


def max_context_length(model: TransformerBridge) -> int:
    """The model's context length as lm-eval resolves it (config, then tokenizer, then 2048)."""
    config = model.original_model.config
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(model.tokenizer, "model_max_length", None)
    if limit is not None and limit != _TOKENIZER_INFINITY:
        return int(limit)
    return _DEFAULT_MAX_LENGTH


def _model_eos_ids(model: TransformerBridge) -> set[int]:
    """EOS ids Hugging Face ``generate`` stops on: the generation config's, else the tokenizer's."""
    gen_cfg = getattr(model.original_model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.original_model.config, "eos_token_id", None)
    if eos is None and model.tokenizer is not None:
        eos = model.tokenizer.eos_token_id
    return _eos_ids(model, eos)


def _encode(tokenizer, text: str, add_special_tokens: bool | None) -> list[int]:
    """lm-eval's context encoding: no special tokens when the text already starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    kwargs = {}
    if bos is not None and text.startswith(bos):
        kwargs["add_special_tokens"] = False
    elif add_special_tokens is not None:
        kwargs["add_special_tokens"] = add_special_tokens
    return tokenizer(text, **kwargs)["input_ids"]


def _left_pad(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def _prefix_cache(model: TransformerBridge, prefix_ids: list[int], device) -> DynamicCache:
    cache = DynamicCache()
    ids = torch.tensor([prefix_ids], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    positions = torch.arange(len(prefix_ids), device=device)[None]
    model(ids, return_type="logits", attention_mask=mask, position_ids=positions,
          logits_to_keep=1, **_cache_kwargs(model, cache))
    return cache


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
    """
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
    if not prompts:
        return []
    max_ctx = max_context_length(model) - max_gen_toks
    if max_ctx <= 0:
        raise ValueError(
            f"max_gen_toks={max_gen_toks} must be less than the model's context length "
            f"{max_context_length(model)}"
        )
    stops = list(until)
    eos_text = tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False) \
        if tokenizer.eos_token_id is not None else None
    if eos_text is not None and eos_text not in stops:
        stops.append(eos_text)
    eos_ids = _model_eos_ids(model)
    pad = _pad_id(tokenizer)
    device = model.cfg.device
    contexts = [(prefix or "") + p for p in prompts]
    full = [_encode(tokenizer, c, add_special_tokens) for c in contexts]
    truncated = [len(t) > max_ctx for t in full]
    full = [t[-max_ctx:] for t in full]

    reuse: dict[int, list[int]] = {}  # request -> suffix tokens after the prefix
    cache = None
    if prefix:
        prefix_ids = _encode(tokenizer, prefix, add_special_tokens)
        n = len(prefix_ids)
        for i, toks in enumerate(full):
            if not truncated[i] and len(toks) > n and toks[:n] == prefix_ids:
                reuse[i] = toks[n:]
        if reuse:
            cache = _prefix_cache(model, prefix_ids, device)

    def sort_key(i: int) -> tuple[int, str]:
        return (-len(full[i]), contexts[i])

    results: list[Generation | None] = [None] * len(prompts)
    plain = sorted((i for i in range(len(prompts)) if i not in reuse), key=sort_key)
    shared = sorted(reuse, key=sort_key)
    jobs = [(b, False) for b in _batches(plain, batch_size)]
    jobs += [(b, True) for b in _batches(shared, batch_size)]
    for batch, use_prefix in jobs:
        rows = [reuse[i] for i in batch] if use_prefix else [full[i] for i in batch]
        ids, mask = _left_pad(rows, pad)
        decoded = _decode(
            model,
            ids.to(device),
            mask.to(device),
            max_new_tokens=max_gen_toks,
            eos_ids=eos_ids,
            stop=stops,
            past_key_values=cache if use_prefix else None,
            think_end=think_end_token,
        )
        for row, i in enumerate(batch):
            text = tokenizer.decode(decoded.tokens[row], skip_special_tokens=True)
            if think_end_token is not None:
                text = text.split(think_end_token)[-1].lstrip()
            cut = _first_stop(text, stops)
            results[i] = Generation(
                text=text if cut is None else text[:cut],
                n_tokens=len(decoded.tokens[row]),
                hit_stop=decoded.hit_stop[row],
                prompt_truncated=truncated[i],
                prefix_reused=use_prefix,
            )
    return results  # type: ignore[return-value]
