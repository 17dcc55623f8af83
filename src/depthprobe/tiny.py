"""Tiny random decoder checkpoints, built offline, for tests and benchmarks.

Each is a real Hugging Face directory (config, safetensors, tokenizer) of a Llama or Qwen3
model with grouped-query attention, so it loads through exactly the same path as an 8B
model. The tokenizer is a byte-level BPE trained on a fixed text, so it is deterministic and
has real merges (spaces and digits tokenize as they do in large vocabularies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

__all__ = ["make_tiny_model", "make_tokenizer", "ARCHITECTURES"]

ARCHITECTURES = ("llama", "qwen3")

_CORPUS = """\
Question: What is the capital of France? Answer: Paris. The answer is 42.
Memorize the following dictionary: apple:12 river:7 window:99 The value of the key 'apple' is 12.
Once upon a time, there was a little girl named Lily. She loved to play outside in the park.
A. B. C. D. Answer: A Answer: B Answer: C Answer: D
Q: There are 15 trees in the grove. Grove workers will plant trees today. After they are done,
there will be 21 trees. How many trees did the grove workers plant today?
A: There are 15 trees originally. Then there were 21 trees after some more were planted.
So there must have been 21 - 15 = 6. The answer is 6.
#### 18 #### 3 #### 70000 0 1 2 3 4 5 6 7 8 9 10 11 100 1000 $ % , . ; : ! ? ( ) - + * / =
The quick brown fox jumps over the lazy dog. Science, history, mathematics and law.
"""


def make_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer with Llama's special tokens and a BOS post-processor."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=2048,
    )


def make_tiny_model(
    out_dir: str | Path,
    *,
    arch: Literal["llama", "qwen3"] = "llama",
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_model: int = 64,
    d_mlp: int | None = None,
    max_position_embeddings: int = 2048,
    init_std: float = 0.08,
    seed: int = 0,
) -> Path:
    """Write a random ``arch`` checkpoint with a saved tokenizer to ``out_dir`` and return the path.

    ``init_std`` is larger than the usual 0.02 so the next-token distributions are peaked:
    greedy decoding on a random model then has clear argmaxes instead of near-ties.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(out)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=d_mlp or 3 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
    )
    if arch == "llama":
        config = LlamaConfig(**common)
    else:
        config = Qwen3Config(head_dim=d_model // n_heads, **common)
    config.architectures = ["LlamaForCausalLM" if arch == "llama" else "Qwen3ForCausalLM"]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.save_pretrained(out)
    return out
