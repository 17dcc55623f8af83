"""The organisms' accuracies on the Hugging Face model during training, with the evaluator's own scoring
(``score_choices``) and decoding loop (``LoopDecoder``); the tests re-measure through TransformerLens."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, LlamaForCausalLM, PreTrainedTokenizerBase

from depthprobe import adapter
from depthprobe.evaluation.decode import LoopDecoder
from depthprobe.evaluation.filters import GSM8K_COT_STRICT, GSM8K_EXACT_MATCH, exact_match, regex_extract
from depthprobe.evaluation.loglikelihood import score_choices
from depthprobe.evaluation.metrics import choice_predictions
from depthprobe.evaluation.stops import StopPolicy
from depthprobe.evaluation.tokenize import encode_context, left_pad
from depthprobe.organisms import data

__all__ = ["STOPS", "evaluate_all", "greedy_generate", "multiple_choice_accuracy", "reasoning_accuracy"]


#: Where a 0-shot gsm8k_cot generation of the organisms ends: EOS, a blank line or the next question.
STOPS = ("\n\n", "Q:")


class _Forward:
    """The Hugging Face model under training, called as the evaluator calls a bridge.

    The scorer calls ``model(tokens, return_type="logits" | "logits_and_cache", past_key_values=,
    attention_mask=, position_ids=)``; the decoding loop reads ``model.tokenizer``.
    """

    def __init__(self, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model, tokenizer

    def parameters(self) -> Any:
        return self.model.parameters()

    def __call__(
        self, tokens: Tensor, *, return_type: str = "logits", past_key_values: Any = None, **kwargs: Any
    ) -> Any:
        cache = DynamicCache() if return_type == "logits_and_cache" else past_key_values
        use = adapter.cache_kwargs(self.model, cache) if cache is not None else {"use_cache": False}
        logits = self.model(input_ids=tokens, **kwargs, **use).logits
        return (logits, cache) if return_type == "logits_and_cache" else logits


class _Decoder(LoopDecoder):
    """The evaluator's KV-cached greedy loop, each step a Hugging Face forward."""

    def step(self, model: Any, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> Tensor:
        return model(ids, attention_mask=mask, position_ids=positions, past_key_values=cache, logits_to_keep=1)[:, -1]


@torch.no_grad()
def multiple_choice_accuracy(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, docs: list[dict[str, Any]], batch_size: int = 64
) -> float:
    """lm-eval ``acc``: argmax of the summed continuation log-prob, scored by the evaluator's ``score_choices``."""
    requests = [(d["context"], [d["target_delimiter"] + c for c in d["choices"]]) for d in docs]
    scores, _ = score_choices(
        _Forward(model, tokenizer),
        requests,
        batch_size=batch_size,
        tokenizer=tokenizer,
        max_length=adapter.max_context_length(model, tokenizer),
    )
    return sum(
        choice_predictions(s.loglikelihoods, d["choices"], s.n_tokens)["acc"] == d["gold"] for s, d in zip(scores, docs)
    ) / len(docs)


@torch.no_grad()
def greedy_generate(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuations by the evaluator's decoding loop (left padding, KV cache), cut at the first of ``STOPS``."""
    policy = StopPolicy(frozenset({tokenizer.eos_token_id}), STOPS, None, tokenizer)
    forward, outs = _Forward(model, tokenizer), []
    for i in range(0, len(prompts), batch_size):
        rows = [encode_context(tokenizer, p) for p in prompts[i : i + batch_size]]
        ids, mask = left_pad(rows, adapter.pad_token_id(tokenizer))
        decoded = _Decoder()(forward, ids, mask, max_new_tokens=max_new_tokens, policy=policy)
        outs += [policy.text(t) for t in decoded.tokens]
    return outs


def reasoning_accuracy(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, docs: list[dict[str, Any]], shots: int = 0
) -> float:
    """gsm8k_cot strict-match exact match (the evaluator's filter and metric)."""
    fewshot = data.reasoning_fewshot(shots)
    gens = greedy_generate(model, tokenizer, [data.gsm8k_cot_prompt(d, fewshot) for d in docs])
    return sum(
        exact_match(regex_extract(g, GSM8K_COT_STRICT), d["answer"], **GSM8K_EXACT_MATCH) for g, d in zip(gens, docs)
    ) / len(docs)


def evaluate_all(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, n: int = 200) -> dict[str, float]:
    """Accuracy per family on the default evaluation documents."""
    return {
        "knowledge": multiple_choice_accuracy(model, tokenizer, data.knowledge_docs()),
        "closedbook": multiple_choice_accuracy(model, tokenizer, data.closedbook_docs()),
        "openbook": multiple_choice_accuracy(model, tokenizer, data.openbook_docs(n)),
        "retrieval_8": multiple_choice_accuracy(model, tokenizer, data.retrieval_docs(n, 8)),
        "reasoning_0shot": reasoning_accuracy(model, tokenizer, data.reasoning_docs(n)),
    }
