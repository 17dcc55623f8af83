"""A small word-level tokenizer for the organisms' synthetic language.

Pre-tokenization splits text into words, whole numbers and single punctuation marks, each
optionally carrying one leading space (GPT-2 style ``Ġ``), and newlines. Whole numbers are
single tokens (like Llama-3's up-to-3-digit number tokens) so that the key-value retrieval
values 0-99, scored as multiple choice by summed log-probability, are never prefixes of one
another ("7" vs "72" would otherwise always favour the shorter choice).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = ["BOS", "EOS", "PAD", "UNK", "MAX_NUMBER", "build_tokenizer", "load_tokenizer", "pretokenize"]

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
#: Every integer 0..MAX_NUMBER is in the vocabulary, with and without a leading space.
MAX_NUMBER = 199

_SPLIT = Regex(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]|\n| +")


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(_SPLIT, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def pretokenize(text: str) -> list[str]:
    """The vocabulary pieces ``text`` splits into (byte-level strings, e.g. ``"Ġis"``)."""
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(text)]


def build_tokenizer(corpus: Iterable[str], out_dir: str | Path) -> PreTrainedTokenizerBase:
    """Build the vocabulary from every piece of ``corpus`` (plus all numbers), save, and reload it.

    Ids are assigned in sorted order of the pieces, so the same corpus always gives the same ids.
    """
    pieces: set[str] = set()
    for text in corpus:
        pieces.update(pretokenize(text))
    for n in range(MAX_NUMBER + 1):
        pieces.update(pretokenize(f"{n} {n}"))
    specials = [PAD, BOS, EOS, UNK]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for piece in sorted(pieces - set(specials)):
        vocab[piece] = len(vocab)

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a saved organism tokenizer (the same way TransformerLens and lm-eval do)."""
    return AutoTokenizer.from_pretrained(str(path))
