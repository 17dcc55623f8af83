"""Chat-template prompts and Qwen3 thinking on/off for generation tasks.

The study compares Qwen3-8B with thinking on and off. Thinking is switched by the chat
template (``enable_thinking``): off, the template itself writes an empty ``<think></think>``
block; on, the model writes its reasoning first and the answer follows ``</think>``. The
answer is therefore what follows the last ``</think>`` (lm-eval's ``think_end_token``), and
the token budget must cover the reasoning, so it is an explicit parameter.
"""

from __future__ import annotations

from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from depthprobe.evaluation.generation import Generation, generate_until
from depthprobe.evaluation.stops import THINK_END, strip_thinking

__all__ = ["THINK_END", "apply_chat_template", "strip_thinking", "generate_chat"]


def apply_chat_template(
    tokenizer, prompt: str, *, enable_thinking: bool | None = None, system: str | None = None
) -> str:
    """One user turn rendered with the tokenizer's chat template, ending in the assistant cue.

    ``enable_thinking`` is passed to the template only when not None (templates without the
    switch ignore it anyway). Returns text; special tokens such as BOS are part of the text, and
    ``generate_until`` then tokenizes it without adding another BOS, as lm-eval does.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
            "use plain prompts (chat=False) for base models"
        )
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def generate_chat(
    model: TransformerBridge,
    prompts: list[str],
    *,
    until: list[str],
    enable_thinking: bool | None,
    max_gen_toks: int,
    batch_size: int = 8,
    system: str | None = None,
    decoder: Any = None,
) -> list[Generation]:
    """Greedy answers to chat-formatted prompts; with thinking on, stops and text apply after ``</think>``.

    ``max_gen_toks`` is the whole budget (reasoning plus answer). A generation that ends inside
    its reasoning has ``hit_stop=False`` and its reasoning as text. Pass ``enable_thinking=True``
    for models that always reason (DeepSeek-R1 distills); None renders the template's default
    and treats the output as having no reasoning block.
    """
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("generate_chat needs a model with a tokenizer (model.tokenizer is None)")
    rendered = [apply_chat_template(tokenizer, p, enable_thinking=enable_thinking, system=system) for p in prompts]
    return generate_until(
        model,
        rendered,
        until=until,
        max_gen_toks=max_gen_toks,
        batch_size=batch_size,
        think_end_token=THINK_END if enable_thinking else None,
        decoder=decoder,
    )
