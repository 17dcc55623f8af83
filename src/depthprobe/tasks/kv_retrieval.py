"""Synthetic key-value retrieval (Bick et al. 2025, Gather-and-Aggregate).

Each example is a dictionary of N ``word:number`` lines followed by a query for one key::

    Memorize the following dictionary:
    apple:12
    river:7
    The value of the key 'river' is

Keys are distinct words from the ``wonderwords`` noun, verb and adjective lists (the lists
the original used), values ``random.sample(range(100), N)``; every value is a choice, appended
with no leading space, scored by summed log-probability. Unlike the original, generation is
seeded: the same ``(n_pairs, n_examples, seed)`` always gives the same examples.
"""

import os
import random
from functools import lru_cache
from importlib import resources
from typing import Any

from depthprobe.tasks.base import Task

__all__ = ["KVRetrieval", "make_kv_examples", "word_pool"]

_WORD_LISTS = ("nounlist.txt", "verblist.txt", "adjectivelist.txt")


@lru_cache(maxsize=1)
def word_pool() -> tuple[str, ...]:
    """The sorted, de-duplicated single-token-safe words (alphabetic only) of wonderwords' default lists."""
    words: set[str] = set()
    for name in _WORD_LISTS:
        text = resources.files("wonderwords.assets").joinpath(name).read_text(encoding="utf-8")
        words.update(w.strip() for w in text.splitlines() if w.strip().isalpha())
    return tuple(sorted(words))


def make_kv_examples(n_pairs: int, n_examples: int, seed: int = 0) -> list:
    """``n_examples`` dictionaries of ``n_pairs`` entries each, reproducible from ``seed``."""
    if not 2 <= n_pairs <= 100:
        raise ValueError(f"n_pairs must be between 2 and 100 (values are distinct integers 0-99), got {n_pairs}")
    if n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    rng = random.Random(seed)
    pool = word_pool()
    out = []
    for _ in range(n_examples):
        keys = rng.sample(pool, n_pairs)
        values = rng.sample(range(100), n_pairs)
        query = rng.randrange(n_pairs)
        out.append({"keys": keys, "values": values, "query": query})
    return out


class KVRetrieval(Task):
    """The retrieval probe; options ``n_pairs`` (default 20), ``n_examples`` (default 100), ``seed`` (0)."""

    name = "kv_retrieval"
    target_delimiter = ""

    def __init__(self, n_pairs: int = 20, n_examples: int = 100, seed: int = 0) -> None:
        self.n_pairs, self.n_examples, self.seed = n_pairs, n_examples, seed
        make_kv_examples(n_pairs, 1, seed)  # validate the options now, not at evaluation time

    def test_docs(self, data_dir: str | os.PathLike[str] | None) -> list:
        return make_kv_examples(self.n_pairs, self.n_examples, self.seed)

    def doc_to_text(self, doc: dict[str, Any]) -> str:
        lines = "\n".join(f"{k}:{v}" for k, v in zip(doc["keys"], doc["values"]))
        return f"Memorize the following dictionary:\n{lines}\nThe value of the key '{doc['keys'][doc['query']]}' is"

    def doc_to_choice(self, doc: dict[str, Any]) -> list[str]:
        return [str(v) for v in doc["values"]]

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        return int(doc["query"])
